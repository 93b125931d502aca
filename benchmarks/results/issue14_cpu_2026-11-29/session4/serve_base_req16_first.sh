#!/bin/sh
# serving on the new quickstart *base* model (replies run to max_tokens like the earlier 2048-vocab measurement)
R=/tmp/dec17; RUN=/tmp/q15/qs/base
date -u; uptime
for i in 1 2; do
  (cd /tmp/src-old && PYTHONPATH=/tmp/src-old python /tmp/src-cur/benchmarks/serve_load.py --run $RUN --levels 1 16 --client openai --threads 1 --requests-per-client 16 --min-requests 16 --json $R/serve_base16_old_$i.json > $R/serve_base16_old_$i.txt 2>&1)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/serve_load.py --run $RUN --levels 1 16 --client openai --threads 1 --requests-per-client 16 --min-requests 16 --json $R/serve_base16_new_$i.json > $R/serve_base16_new_$i.txt 2>&1)
  uptime
done
date -u

#!/bin/sh
# issue 14 CPU decode + serving on the new quickstart model (8192 vocab): old eager engine (69fc7c8) vs work tree (ec70eae)
R=/tmp/dec17; RUN=/tmp/q15/qs/chat
date -u; uptime
for i in 1 2 3; do
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-old python benchmarks/decode_cpu.py --run $RUN --batches 1 16 --new-tokens 128 --repeats 3 > $R/decode_default_threads_old_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/decode_cpu.py --run $RUN --batches 1 16 --new-tokens 128 --repeats 3 --compile > $R/decode_default_threads_new_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-old python benchmarks/decode_cpu.py --run $RUN --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 > $R/decode_1thread_old_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/decode_cpu.py --run $RUN --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_1thread_new_$i.jsonl)
  uptime
done
for i in 1 2; do
  (cd /tmp/src-old && PYTHONPATH=/tmp/src-old python /tmp/src-cur/benchmarks/serve_load.py --run $RUN --levels 1 16 --client openai --threads 1 --requests-per-client 4 --min-requests 4 --json $R/serve_old_$i.json > $R/serve_old_$i.txt 2>&1)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/serve_load.py --run $RUN --levels 1 16 --client openai --threads 1 --requests-per-client 4 --min-requests 4 --json $R/serve_new_$i.json > $R/serve_new_$i.txt 2>&1)
  uptime
done
date -u

#!/bin/sh
# issue 14 batch-16 decode: old eager (69fc7c8), compiled at 87b2a12, compiled with read spans (work tree), alternated
R=/tmp/d14c; cd /work/main
date -u; uptime
for i in 1 2; do
  PYTHONPATH=/work/wt-old python benchmarks/decode_cpu.py --run /tmp/cs-q --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 > $R/decode_old_$i.jsonl
  PYTHONPATH=/work/wt-head python benchmarks/decode_cpu.py --run /tmp/cs-q --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_head_$i.jsonl
  PYTHONPATH=/work/main python benchmarks/decode_cpu.py --run /tmp/cs-q --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_new_$i.jsonl
  uptime
done
date -u

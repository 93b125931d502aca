#!/bin/sh
# issue 14 decode on the new quickstart model (8192 vocab): old eager engine (69fc7c8) vs compiled step (work tree), alternated
R=/tmp/dec15; RUN=/tmp/q15/qs/chat
date -u; uptime
for i in 3 4 5; do
  (cd /tmp/src-new3 && PYTHONPATH=/tmp/src-old python benchmarks/decode_cpu.py --run $RUN --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 > $R/decode_old_$i.jsonl)
  (cd /tmp/src-new3 && PYTHONPATH=/tmp/src-new3 python benchmarks/decode_cpu.py --run $RUN --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_new_$i.jsonl)
  uptime
done
date -u

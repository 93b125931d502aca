#!/bin/sh
R=/tmp/dec15; RUN=/tmp/q15/qs/chat
for i in 6 7 8; do
  (cd /tmp/src-new3 && PYTHONPATH=/tmp/src-old python benchmarks/decode_cpu.py --run $RUN --batches 16 --new-tokens 128 --threads 1 --repeats 3 > $R/decode_old_$i.jsonl)
  (cd /tmp/src-new3 && PYTHONPATH=/tmp/src-new3 python benchmarks/decode_cpu.py --run $RUN --batches 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_new_$i.jsonl)
  (cd /tmp/src-new4 && PYTHONPATH=/tmp/src-new4 python benchmarks/decode_cpu.py --run $RUN --batches 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_new4_$i.jsonl)
  uptime
done

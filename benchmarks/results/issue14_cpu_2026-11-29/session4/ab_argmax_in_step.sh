#!/bin/sh
R=/tmp/dec16; RUN=/tmp/q15/qs/chat
for i in 1 2 3 4 5; do
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-main python benchmarks/decode_cpu.py --run $RUN --batches 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/abmain_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/decode_cpu.py --run $RUN --batches 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/abcur_$i.jsonl)
done

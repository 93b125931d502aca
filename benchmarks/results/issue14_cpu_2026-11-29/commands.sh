#!/bin/sh
# issue 14 CPU figures: old (/work/main) vs new (decode14), alternated, at normal priority
cd /work/wt-decode14
R=/tmp/d14/res1; mkdir -p $R
date -u; uptime
for i in 1 2; do
  PYTHONPATH=/work/main python benchmarks/decode_cpu.py --run /tmp/d14/q --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 > $R/decode_old_$i.jsonl
  PYTHONPATH=$PWD python benchmarks/decode_cpu.py --run /tmp/d14/q --batches 1 16 --new-tokens 128 --threads 1 --repeats 3 --compile > $R/decode_new_$i.jsonl
  uptime
done
for i in 1 2; do
  PYTHONPATH=/work/main python benchmarks/serve_load.py --run /tmp/d14/q --levels 1 16 --client openai --threads 1 --requests-per-client 4 --min-requests 4 --json $R/serve_old_$i.json > $R/serve_old_$i.txt 2>&1
  uptime
  PYTHONPATH=$PWD python benchmarks/serve_load.py --run /tmp/d14/q --levels 1 16 --client openai --threads 1 --requests-per-client 4 --min-requests 4 --json $R/serve_new_$i.json > $R/serve_new_$i.txt 2>&1
  uptime
done
date -u

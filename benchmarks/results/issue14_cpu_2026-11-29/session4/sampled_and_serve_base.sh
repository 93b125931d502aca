#!/bin/sh
# issue 14 on the new quickstart model (8192 vocab): old = eager engine of 69fc7c8, new = main (a2e793f + decode_cpu options)
R=/tmp/dec18; CHAT=/tmp/q15/qs/chat; BASE=/tmp/q15/qs/base
S="--temperature 0.8 --top-k 50 --top-p 0.95"
date -u; uptime
for i in 1 2 3; do
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-old python benchmarks/decode_cpu.py --run $CHAT --batches 1 16 --new-tokens 128 --repeats 3 $S > $R/sampled_default_threads_old_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/decode_cpu.py --run $CHAT --batches 1 16 --new-tokens 128 --repeats 3 --compile $S > $R/sampled_default_threads_new_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-old python benchmarks/decode_cpu.py --run $CHAT --batches 1 16 --new-tokens 128 --repeats 3 --threads 1 $S > $R/sampled_1thread_old_$i.jsonl)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/decode_cpu.py --run $CHAT --batches 1 16 --new-tokens 128 --repeats 3 --threads 1 --compile $S > $R/sampled_1thread_new_$i.jsonl)
  uptime
done
for n in 4 16; do for i in 1 2; do
  (cd /tmp/src-old && PYTHONPATH=/tmp/src-old python /tmp/src-cur/benchmarks/serve_load.py --run $BASE --levels 1 16 --client openai --threads 1 --requests-per-client $n --min-requests $n --json $R/serve_base_req${n}_old_$i.json > $R/serve_base_req${n}_old_$i.txt 2>&1)
  (cd /tmp/src-cur && PYTHONPATH=/tmp/src-cur python benchmarks/serve_load.py --run $BASE --levels 1 16 --client openai --threads 1 --requests-per-client $n --min-requests $n --json $R/serve_base_req${n}_new_$i.json > $R/serve_base_req${n}_new_$i.txt 2>&1)
  uptime
done; done
date -u

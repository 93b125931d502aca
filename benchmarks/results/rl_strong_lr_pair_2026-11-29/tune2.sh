#!/bin/sh
# RL tuning pair from /tmp/rl17/w/sft: C temperature 0.7, D std-normalize; 10 min each, 1 thread each, in parallel
cd /work/main
export OMP_NUM_THREADS=1
date -u; uptime
python -m chatsmith.cli rl /tmp/rl17/w/sft --task arithmetic:3 --max-minutes 10 --out /tmp/rl17/C --seed 1 --temperature 0.7 --device cpu --json > /tmp/rl17/C.json 2>/tmp/rl17/C.err &
python -m chatsmith.cli rl /tmp/rl17/w/sft --task arithmetic:3 --max-minutes 10 --out /tmp/rl17/D --seed 1 --std-normalize --device cpu --json > /tmp/rl17/D.json 2>/tmp/rl17/D.err &
wait
uptime
for r in C D; do python -m chatsmith.cli eval /tmp/rl17/$r --task arithmetic:3 --device cpu --json > /tmp/rl17/${r}_eval.json 2>&1 & done
wait
date -u

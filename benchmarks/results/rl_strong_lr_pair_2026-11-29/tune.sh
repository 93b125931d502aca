#!/bin/sh
# RL tuning pair from /tmp/rl17/w/sft: A defaults, B lr 2e-4 warmup 10; 10 min each, 1 thread each, in parallel
cd /work/main
export OMP_NUM_THREADS=1
date -u; uptime
python -m chatsmith.cli rl /tmp/rl17/w/sft --task arithmetic:3 --max-minutes 10 --out /tmp/rl17/A --seed 1 --device cpu --json > /tmp/rl17/A.json 2>/tmp/rl17/A.err &
python -m chatsmith.cli rl /tmp/rl17/w/sft --task arithmetic:3 --max-minutes 10 --out /tmp/rl17/B --seed 1 --lr 2e-4 --warmup-steps 10 --device cpu --json > /tmp/rl17/B.json 2>/tmp/rl17/B.err &
wait
uptime
for r in A B; do python -m chatsmith.cli eval /tmp/rl17/$r --task arithmetic:3 --device cpu --json > /tmp/rl17/${r}_eval.json 2>&1 & done
wait
date -u

#!/bin/bash
# 8 pretrainings on builtin:python-stdlib, 2 threads each, side by side; then eval --code with
# the working tree's eval. Variants: code version (old = main HEAD, new = aligned windows,
# spm = aligned + SPM only + 80% line cuts) x fim rate x seed.
set -u
MIN=${MIN:-6}; SAMPLES=${SAMPLES:-300}
W=/tmp/sweep; mkdir -p $W; cd .devrun
nproc; python3 -c "import torch, sys; print(torch.__version__, sys.version)"
run() { # name src rate seed
  local extra=""; [ "$3" != 0 ] && extra="--fim $3"
  ( mkdir -p $W/pkg-$1 && cp -r src-$2 $W/pkg-$1/chatsmith && cd $W && \
    OMP_NUM_THREADS=2 PYTHONPATH=$W/pkg-$1 timeout $(python3 -c "print(int($MIN*60+150))") python3 -m chatsmith.cli pretrain --data builtin:python-stdlib $extra \
      --max-steps 100000 --max-minutes $MIN --device cpu --json --seed $4 --out $W/$1 > $W/$1.pretrain.json 2> $W/$1.log ) &
}
run nofim_a new 0 1337
run nofim_b new 0 7
run old09_a old 0.9 1337
run new09_a new 0.9 1337
run new09_b new 0.9 7
run spm09_a spm 0.9 1337
run spm09_b spm 0.9 7
run new05_a new 0.5 1337
wait
date
for n in nofim_a nofim_b old09_a new09_a new09_b spm09_a spm09_b new05_a; do
  ( mkdir -p $W/eval && cp -r src-new $W/eval/chatsmith 2>/dev/null; cd $W && OMP_NUM_THREADS=2 PYTHONPATH=$W/eval timeout 300 python3 -m chatsmith.cli eval $W/$n --code --samples $SAMPLES --json > $W/$n.eval.json 2> $W/$n.eval.err ) &
  sleep 1
done
wait
date
python3 - <<'PY'
import json, glob, os
W = "/tmp/sweep"; out = {}
for n in ["nofim_a","nofim_b","old09_a","new09_a","new09_b","spm09_a","spm09_b","new05_a"]:
    r = {}
    for k in ("pretrain", "eval"):
        try: r[k] = json.load(open(f"{W}/{n}.{k}.json"))
        except Exception as e: r[k] = {"error": str(e), "tail": open(f"{W}/{n}.{'log' if k=='pretrain' else 'eval.err'}").read()[-600:]}
    out[n] = r
json.dump(out, open(os.environ["OUT"] + "/fimsweep.json", "w"), indent=1)
for n, r in out.items():
    e = r["eval"]
    print(n, r["pretrain"].get("step"), *(f"{k}={e.get(k)}" for k in ("bpb","infill_single_line_em","infill_multi_line_em","left_to_right_single_line_em","left_to_right_multi_line_em","infill_in_line_em","left_to_right_in_line_em","middle_bpb_with_suffix","middle_bpb_prefix_only")))
PY

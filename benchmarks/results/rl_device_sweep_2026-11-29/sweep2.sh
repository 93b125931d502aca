#!/bin/bash
# 16 one-thread probes from the 54% SFT start: RL variants and SFT continuation, then eval.
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
CS="python3 -m chatsmith.cli"
W=/tmp/sweep; mkdir -p $W
nproc; lscpu | grep -E "Model name|^CPU\(s\)|Thread" ; python3 -c "import torch; print(torch.__version__)"
$CS rl --help > /dev/null 2>$OUT/import.err || { echo IMPORT FAILED; cat $OUT/import.err; exit 1; }
MIN=${MIN:-6}
declare -A V=(
 [base]="" [po_1e4]="--positive-only" [po_3e4]="--positive-only --lr 3e-4" [po_1e3]="--positive-only --lr 1e-3"
 [po_3e3]="--positive-only --lr 3e-3" [po_1e3_s2]="--positive-only --lr 1e-3 --seed 2" [po_3e4_s2]="--positive-only --lr 3e-4 --seed 2"
 [po_1e3_p16]="--positive-only --lr 1e-3 --prompts-per-step 16" [po_1e3_t07]="--positive-only --lr 1e-3 --temperature 0.7"
 [po_1e3_all]="--positive-only --lr 1e-3 --task arithmetic" [po_1e3_keep]="--positive-only --lr 1e-3 --keep-flat-groups"
 [po_1e3_g4]="--positive-only --lr 1e-3 --group-size 4 --prompts-per-step 16" [po_6e4]="--positive-only --lr 6e-4"
 [po_1e3_w]="--positive-only --lr 1e-3 --warmup-steps 20"
)
for n in "${!V[@]}"; do
  ( timeout 250 $CS rl .devrun/sft --task arithmetic:3 --max-minutes $MIN --eval-every 100 --device cpu --json --out $W/$n ${V[$n]} > $W/$n.train.json 2> $W/$n.err
    timeout 30 $CS eval $W/$n --task arithmetic:3 --json --device cpu > $W/$n.greedy.json 2>>$W/$n.err
    timeout 60 $CS eval $W/$n --task arithmetic:3 --samples 8 --json --device cpu > $W/$n.eval.json 2>>$W/$n.err ) &
done
for t in arithmetic:3; do n=sft_${t/:/}
  ( timeout 250 $CS sft .devrun/sft --task $t --max-minutes $MIN --device cpu --json --out $W/$n > $W/$n.train.json 2> $W/$n.err
    timeout 30 $CS eval $W/$n --task arithmetic:3 --json --device cpu > $W/$n.greedy.json 2>>$W/$n.err
    timeout 60 $CS eval $W/$n --task arithmetic:3 --samples 8 --json --device cpu > $W/$n.eval.json 2>>$W/$n.err ) &
done
sleep 30; uptime; wait; uptime
python3 - <<'PY'
import json, glob, os
out = {}
for f in sorted(glob.glob("/tmp/sweep/*.train.json")):
    n = os.path.basename(f)[:-len(".train.json")]
    d = {}
    for kind in ("train", "greedy", "eval"):
        try: d[kind] = json.loads(open(f"/tmp/sweep/{n}.{kind}.json").read())
        except Exception as e: d[kind] = f"missing: {e}"
    checks = []
    try:
        for line in open(f"/tmp/sweep/{n}/metrics.jsonl"):
            r = json.loads(line)
            if "pass@1" in r: checks.append((r.get("step"), r["pass@1"]))
    except Exception as e: checks = str(e)
    d["checks"] = checks
    d["err_tail"] = open(f"/tmp/sweep/{n}.err", errors="replace").read()[-300:]
    out[n] = d
    ev = d["eval"] if isinstance(d["eval"], dict) else {}
    tr = d["train"] if isinstance(d["train"], dict) else {}
    gr = d["greedy"] if isinstance(d["greedy"], dict) else {}
    print(n, "steps", tr.get("step"), "greedy", gr.get("pass@1"), "sampled", ev.get("pass@1"), "pass@8", ev.get("pass@k"), "checks", checks)
json.dump(out, open(os.environ["OUT"] + "/sweep.json", "w"), indent=1)
PY

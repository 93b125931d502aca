"""Benchmark for issue 5: does RL on `arithmetic` raise held-out pass@1 over its SFT start?

Pipeline, all through the real command line on CPU:

1. `chatsmith pretrain` a small model briefly on the built-in corpus (tokenizer + weights);
2. `chatsmith sft --task arithmetic` on the task's worked examples (the supervised warm-up);
3. `chatsmith eval --task arithmetic` (greedy pass@1 on the 200 held-out problems);
4. `chatsmith rl --task arithmetic` for --rl-minutes (10 by default);
5. the same evaluation on the RL run.

Prints one JSON object with both figures, the gain in points, the commands and the PNG path.
Run it under the shared bench lock:

    flock /tmp/chatsmith-bench.lock python benchmarks/rl_arithmetic.py --work /tmp/rl-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ENV = dict(os.environ)


def run(cmd: list[str], log: list[dict]) -> dict:
    t0 = time.time()
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    seconds = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    log.append({"command": shlex.join(cmd), "seconds": round(seconds, 1)})
    print(f"  {seconds:.0f}s: {json.dumps(out)[:300]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/rl-bench"))
    ap.add_argument("--task", default="arithmetic:1")
    ap.add_argument("--depth", default="2")
    ap.add_argument("--pretrain-minutes", default="1")
    ap.add_argument("--sft-minutes", default="3")
    ap.add_argument("--sft-lr", default="3e-3")
    ap.add_argument("--rl-minutes", default="10")
    ap.add_argument("--rl-args", default="", help="extra flags for `chatsmith rl`")
    ap.add_argument("--seed", default="1337")
    ap.add_argument("--samples", default="8", help="samples per held-out problem for pass@1")
    ap.add_argument(
        "--threads",
        default="1",
        help="torch threads per process (OMP_NUM_THREADS); on 2 cores shared with "
        "other jobs, 2 threads oversubscribe them and small models slow down a lot",
    )
    a = ap.parse_args()
    ENV["OMP_NUM_THREADS"] = a.threads
    cs = [sys.executable, "-m", "chatsmith.cli"]
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    pre, sft, rl = w / "pretrain", w / "sft", w / "rl"
    common = ["--device", "cpu", "--seed", a.seed, "--json"]
    log: list[dict] = []
    if not (pre / "latest").exists():
        run([*cs, "pretrain", "--depth", a.depth, "--vocab-size", "512", "--seq-len", "128",
             "--batch-size", "16", "--max-minutes", a.pretrain_minutes, "--out", str(pre),
             *common], log)  # fmt: skip
    if not (sft / "latest").exists():
        run([*cs, "sft", str(pre), "--task", a.task, "--max-minutes", a.sft_minutes,
             "--lr", a.sft_lr, "--out", str(sft), *common], log)  # fmt: skip
    greedy = ["--task", a.task, "--device", "cpu", "--json"]
    # pass@1 as in Chen et al.: mean fraction right over n samples at temperature 1 (the policy
    # RL optimises); the greedy figure is reported alongside
    sampled = [*greedy, "--samples", a.samples]
    before, before_greedy = (run([*cs, "eval", str(sft), *x], log) for x in (sampled, greedy))
    rl_result = run([*cs, "rl", str(sft), "--task", a.task, "--max-minutes", a.rl_minutes,
                     "--out", str(rl), *shlex.split(a.rl_args), *common], log)  # fmt: skip
    after, after_greedy = (run([*cs, "eval", str(rl), *x], log) for x in (sampled, greedy))
    summary = {
        "task": a.task,
        "threads": a.threads,
        "sft_pass@1": before["pass@1"],
        "rl_pass@1": after["pass@1"],
        "gain_points": round(100 * (after["pass@1"] - before["pass@1"]), 1),
        "samples_per_problem": after["k"],
        "sft_pass@k": before["pass@k"],
        "rl_pass@k": after["pass@k"],
        "sft_greedy_pass@1": before_greedy["pass@1"],
        "rl_greedy_pass@1": after_greedy["pass@1"],
        "held_out_problems": after["n"],
        "rl_steps": rl_result["step"],
        "rl_train_seconds": round(rl_result["train_seconds"], 1),
        "rl_final_eval": rl_result["final_eval"],
        "reward_curve": str(rl / "reward_curve.png"),
        "commands": log,
    }
    (w / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

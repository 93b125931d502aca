"""Benchmark for issue 16: does RL make a strong SFT model better, over several seeds?

Pipeline, all through the real command line on CPU, as a new user would run it:

1. `chatsmith pretrain` with the defaults for --pretrain-minutes (3);
2. `chatsmith sft --task arithmetic` for --sft-minutes (5): the strong start;
3. `chatsmith eval --task arithmetic:3`: greedy pass@1, and pass@1 / pass@k from k samples;
4. for each seed: `chatsmith rl --task arithmetic:3` for --rl-minutes (10), then the same
   evaluations of the RL run.

Pretrain and SFT are built once (a stage whose folder exists is reused); each seed's RL run
starts from the same SFT model. Prints one JSON object (also written to WORK/summary.json)
with every figure, the mean and spread over seeds, and the commands. Run it under the lock:

    flock /tmp/bench.lock python benchmarks/rl_strong.py --work /tmp/rl-strong
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rl_arithmetic import ENV, run


def evaluate(cs: list[str], run_dir: Path, task: str, samples: str, log: list[dict]) -> dict:
    greedy = run([*cs, "eval", str(run_dir), "--task", task, "--device", "cpu", "--json"], log)
    sampled = run(
        [*cs, "eval", str(run_dir), "--task", task, "--samples", samples, "--device", "cpu",
         "--json"], log)  # fmt: skip
    return {
        "greedy_pass@1": greedy["pass@1"],
        "sampled_pass@1": sampled["pass@1"],
        f"pass@{sampled['k']}": sampled["pass@k"],
        "problems": greedy["n"],
    }


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/rl-strong"))
    ap.add_argument("--sft-task", default="arithmetic")
    ap.add_argument("--task", default="arithmetic:3")
    ap.add_argument("--pretrain-minutes", default="3")
    ap.add_argument("--sft-minutes", default="5")
    ap.add_argument("--rl-minutes", default="10")
    ap.add_argument("--rl-args", default="", help="extra flags for `chatsmith rl`")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--samples", default="8", help="samples per held-out problem for pass@k")
    ap.add_argument(
        "--build-threads",
        default="2",
        help="OMP_NUM_THREADS of pretrain and SFT (a new user's default: every core)",
    )
    ap.add_argument(
        "--threads",
        default="1",
        help="OMP_NUM_THREADS of RL and eval: a small model samples faster on one thread when "
        "the cores are shared (see rl_arithmetic.py)",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds trained at once (2 on 2 cores with --threads 1: half the wall time)",
    )
    a = ap.parse_args()
    ENV["OMP_NUM_THREADS"] = a.build_threads
    cs = [sys.executable, "-m", "chatsmith.cli"]
    w = a.work
    w.mkdir(parents=True, exist_ok=True)
    pre, sft = w / "pretrain", w / "sft"
    log: list[dict] = []
    if not (pre / "latest").exists():
        run([*cs, "pretrain", "--max-minutes", a.pretrain_minutes, "--out", str(pre),
             "--device", "cpu", "--json"], log)  # fmt: skip
    if not (sft / "latest").exists():
        run([*cs, "sft", str(pre), "--task", a.sft_task, "--max-minutes", a.sft_minutes,
             "--out", str(sft), "--device", "cpu", "--json"], log)  # fmt: skip
    ENV["OMP_NUM_THREADS"] = a.threads
    start = evaluate(cs, sft, a.task, a.samples, log)

    def one_seed(seed: str) -> dict:
        out = w / f"rl-seed{seed}"
        result = run([*cs, "rl", str(sft), "--task", a.task, "--max-minutes", a.rl_minutes,
                      "--out", str(out), "--seed", seed, *shlex.split(a.rl_args),
                      "--device", "cpu", "--json"], log)  # fmt: skip
        return {
            **evaluate(cs, out, a.task, a.samples, log),
            "rl_steps": result["step"],
            "rl_train_seconds": round(result["train_seconds"], 1),
            "reward_curve": str(out / "reward_curve.png"),
        }

    names = a.seeds.split(",")
    with ThreadPoolExecutor(a.jobs) as pool:  # each seed is its own process
        seeds = dict(zip(names, pool.map(one_seed, names)))
    gains = {
        key: spread([100 * (s[key] - start[key]) for s in seeds.values()])
        for key in start
        if key != "problems"
    }
    after = {key: spread([s[key] for s in seeds.values()]) for key in start if key != "problems"}
    summary = {
        "task": a.task,
        "sft_task": a.sft_task,
        "threads": {"pretrain_sft": a.build_threads, "rl_eval": a.threads},
        "sft": start,
        "rl": seeds,
        "rl_mean_and_spread": after,
        "gain_points": gains,
        "commands": log,
    }
    (w / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

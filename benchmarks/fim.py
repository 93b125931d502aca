"""Fill-in-the-middle benchmark: the same pretraining budget with and without `--fim 0.5`.

Trains two models on builtin:python-stdlib with the real `chatsmith pretrain` command (all
other settings at their defaults, the same seed and the same step budget), at the same time so
that both see the same machine load, then scores each with `chatsmith eval RUN --code --json`:
left-to-right bits per byte on the held-out files, infill exact match on held-out single-line
and multi-line middles, and next-line exact match. Usage:

    python benchmarks/fim.py --steps 300 --out /tmp/fimbench

With `--one-at-a-time --threads 2` each model has both cores to itself for its budget (the
machine's load then differs between the two; the script records it).

A run folder that already holds a finished run is evaluated again, not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatsmith.cli", *args]


def finish(out: Path, name: str, proc: subprocess.Popen, log) -> None:
    stdout, _ = proc.communicate()
    log.close()
    if proc.returncode != 0:
        sys.exit(f"{name} failed; see {out / (name + '.log')}")
    (out / f"{name}.pretrain.json").write_text(stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per model")
    ap.add_argument("--max-minutes", type=float, default=40.0, help="time cap per model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=100, help="eval spans of each kind")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per model")
    ap.add_argument("--rate", default="0.5", help="--fim rate of the FIM model")
    ap.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="train the models one after the other (each with --threads) instead of together",
    )
    a = ap.parse_args()
    runs = {"no_fim": [], f"fim_{a.rate}": ["--fim", a.rate]}
    # Two trainings share the cores; more threads than cores makes PyTorch's thread pools spin
    # against each other (a busy 2-core machine ran 50x slower with 2 threads each).
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    a.out.mkdir(parents=True, exist_ok=True)
    procs, started = {}, time.time()
    for name, extra in runs.items():
        run = a.out / name
        if (run / "latest").exists():
            continue
        cmd = cli(
            "pretrain",
            "--data",
            "builtin:python-stdlib",
            *extra,
            "--max-steps",
            str(a.steps),
            "--max-minutes",
            str(a.max_minutes),
            "--device",
            "cpu",
            "--json",
            "--out",
            str(run),
        )
        print(" ".join(cmd[2:]), file=sys.stderr)
        log = open(a.out / f"{name}.log", "w")
        procs[name] = (
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env),
            log,
        )
        if a.one_at_a_time:
            finish(a.out, name, *procs.pop(name))
    for name, (proc, log) in procs.items():
        finish(a.out, name, proc, log)
    results = {}
    for name in runs:
        ev = subprocess.run(
            cli("eval", str(a.out / name), "--code", "--samples", str(a.samples), "--json"),
            capture_output=True,
            text=True,
            env=env,
        )
        if ev.returncode != 0:
            sys.exit(ev.stderr[-2000:])
        results[name] = {
            "pretrain": json.loads((a.out / f"{name}.pretrain.json").read_text()),
            "eval": json.loads(ev.stdout),
        }
    results["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads_per_model": a.threads,
        "load_average_at_end": os.getloadavg(),
        "wall_seconds": time.time() - started,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""CPU pretraining benchmark: held-out bits per byte after exactly N minutes of training.

Runs the real `chatsmith pretrain` command on the built-in corpus (fixed held-out split) and
reads its JSON figures and metrics. Usage:

    python benchmarks/pretrain_cpu.py --minutes 5 [-- extra pretrain flags]

`--max-minutes` counts training steps only: tokenizer training, tokenization, evaluations and
checkpoint writes come on top and are reported separately as wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="extra flags for chatsmith pretrain")
    a = ap.parse_args()
    out = a.out or Path(tempfile.mkdtemp()) / "run"
    cmd = [
        sys.executable,
        "-m",
        "chatsmith.cli",
        "pretrain",
        "--out",
        str(out),
        "--max-minutes",
        str(a.minutes),
        "--device",
        "cpu",
        "--json",
        *a.extra,
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    result = json.loads(proc.stdout)
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]
    card = next(line for line in proc.stderr.splitlines() if line.startswith("model:"))
    summary = {
        "command": " ".join(["chatsmith", *cmd[3:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "model": card,
        "steps": result["step"],
        "train_seconds": round(result["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "tokens": result["tokens"],
        "median_tokens_per_s": round(sorted(speeds)[len(speeds) // 2]) if speeds else None,
        "val_loss": round(result["final_eval"]["val_loss"], 4),
        "val_bpb": round(result["final_eval"]["val_bpb"], 4),
        "run": str(out),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Time `chatsmith quickstart` end to end and report the run's held-out figures (one JSON object).

    flock /tmp/chatsmith-bench.lock python benchmarks/quickstart.py --out /tmp/qs-bench

The wall time is that of the real command in a subprocess (process start and imports
included). After the timing, the base model's held-out chat loss is measured the same way SFT
measures it, so the JSON shows what SFT changed; that extra evaluation is not in the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def base_chat_loss(summary: dict) -> dict:
    """Held-out chat loss of the pretrained model before SFT (same examples as SFT's)."""
    from chatsmith.data.conversations import train_val_conversations
    from chatsmith.inference.loading import load_run
    from chatsmith.training.sft import SFT, build_examples

    base = load_run(summary["base_run"], "cpu")
    _, val = train_val_conversations(None)
    examples = build_examples(base.tokenizer, val, base.cfg.max_seq_len)
    objective = SFT(examples, examples, base.tokenizer, 16, 0, torch.device("cpu"))
    return objective.evaluate(base.model, final=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/chatsmith-quickstart-bench"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "chatsmith.cli",
        "quickstart",
        "--out",
        str(args.out),
        "--device",
        args.device,
        "--json",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"quickstart failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    before = base_chat_loss(summary)
    print(
        json.dumps(
            {
                "command": " ".join(["chatsmith", *cmd[3:]]),
                "wall_seconds": round(wall, 1),
                "under_15_minutes": wall < 15 * 60,
                "cpu_cores": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "stage_seconds": {k: round(v, 1) for k, v in summary["stage_seconds"].items()},
                "plan": {
                    k: summary["plan"][k]
                    for k in ("depth", "preset", "vocab_size", "seq_len", "total_minutes")
                },
                "pretrain": summary["pretrain"],
                "sft": summary["sft"],
                "base_model_held_out_chat": before,
                "samples": summary["samples"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

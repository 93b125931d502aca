"""The three transformer families on the same data and the same time budget (CPU).

- decoder-only (GPT) and encoder-decoder (the 2017 Transformer) learn the `chitchat-reply` task
  (a turn of the built-in conversations -> its reply) and are scored on the same held-out pairs:
  loss per target token (the same tokenizer, trained on the same text, so the same tokens);
- the encoder (BERT-style) learns masked-language modelling on the built-in corpus and is
  scored on held-out masked-token loss and accuracy.

Sizes are matched on parameters that are not embeddings: 6 decoder layers; 2 encoder + 3 decoder
layers (cross-attention makes decoder layers a third larger); 6 encoder layers; all 128 wide with
the `narrow` preset's heads and MLPs. Usage:

    python benchmarks/families.py --minutes 3.5 [--out DIR]

`--minutes` counts training steps only (tokenizer training, tokenization and the final
evaluation come on top). tokens/s counts the tokens each objective learns from per second of
training: target tokens for the two seq2seq models, every input token for the encoder.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from chatsmith.checkpoint import read_run_info
from chatsmith.models import ModelConfig, build_model
from chatsmith.reporting import Reporter
from chatsmith.training.config import PretrainConfig, RunConfig
from chatsmith.training.metrics import read_metrics
from chatsmith.training.pretrain import pretrain

FAMILIES = {
    "decoder-only": dict(arch="decoder", task="chitchat-reply", n_layer=6, batch_size=32),
    "encoder-decoder": dict(
        arch="encoder_decoder", task="chitchat-reply", n_layer=2, n_decoder_layer=3, batch_size=32
    ),
    "encoder": dict(arch="encoder", n_layer=6, batch_size=16),
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_family(name: str, over: dict, minutes: float, out: Path) -> dict:
    # quick held-out checks every 10 steps (256 pairs; outside the timed budget) give loss by
    # step, to compare the families at equal steps as well as at equal time
    config = PretrainConfig(**over, eval_every=10, save_every=10**9)
    run = RunConfig(out=out / name, max_minutes=minutes, device=torch.device("cpu"), seed=1337)
    t0 = time.time()
    result = pretrain(config, run, Reporter(quiet=True))
    wall = time.time() - t0
    cfg = ModelConfig.from_dict(read_run_info(out / name)["model"])
    model = build_model(cfg)
    embed = cfg.vocab_size * cfg.d_model
    records = read_metrics(out / name / "metrics.jsonl")
    curve = [(r["step"], round(r["val_loss"], 4)) for r in records if "val_loss" in r]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    final = result.final_eval
    return {
        "family": name,
        "objective": "masked-LM" if cfg.arch == "encoder" else "chitchat-reply (seq2seq)",
        "layers": f"{cfg.n_layer}+{cfg.n_decoder_layer}"
        if cfg.arch == "encoder_decoder"
        else str(cfg.n_layer),
        "non_embedding_parameters": sum(p.numel() for p in model.parameters()) - embed,
        "steps": result.step,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "tokens": result.tokens,
        "tokens_per_s": round(result.tokens / result.train_seconds),
        "median_step_tokens_per_s": round(sorted(speeds)[len(speeds) // 2]) if speeds else None,
        "val_loss": round(final["val_loss"], 4),
        "val_accuracy": round(final["val_accuracy"], 4) if "val_accuracy" in final else None,
        "val_tokens": final.get("val_tokens"),
        "quick_val_loss_by_step": curve[:-1],  # the last entry is the final evaluation
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    # one thread: on a shared, oversubscribed machine two threads wait on each other and a
    # step can take many times longer; give 2 on an idle 2-core machine
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = a.out or Path(tempfile.mkdtemp())
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    rows = [run_family(name, FAMILIES[name], a.minutes, out) for name in a.only]
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    summary = {
        "command": f"python benchmarks/families.py --minutes {a.minutes} --threads {a.threads}",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads",
        "load_average_before_after": [load_before, load_after],
        "results": rows,
        "runs": str(out),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""CUDA benchmark: training throughput and MFU of a GPT-2-small-shaped model (bf16 + compile),
and generator throughput at batch 1 and 32. Prints one JSON object.

    python benchmarks/gpu.py --minutes 2 --out /tmp/gpt2run

Training goes through the real `pretrain` stage on the built-in corpus; the generator is the
shared inference Engine loading that run. MFU = (training FLOPs per token x tokens/s) / peak,
with the peak dense bf16 figure for the card (H100/H200 SXM: 989 TFLOP/s, NVIDIA datasheet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def bench_generator(run: Path, batch: int, new_tokens: int, device: str) -> dict:
    from chatsmith.inference.engine import SamplingParams
    from chatsmith.inference.loading import load_run

    loaded = load_run(run, device)
    engine = loaded.engine(max_batch=batch)
    prompt = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode("Hi! How was your weekend?")]
    params = SamplingParams(max_tokens=new_tokens, temperature=1.0, top_k=50, seed=0)
    # stop tokens end sequences early at random points; measure pure decode by ignoring them
    engine.stop_ids = frozenset()
    engine.generate_many([prompt] * batch, params)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = engine.generate_many([prompt] * batch, params)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = sum(len(g.tokens) for g in out)
    return {"batch": batch, "tokens": tokens, "seconds": round(dt, 3),
            "tokens_per_s": round(tokens / dt, 1),
            "per_sequence_tokens_per_s": round(tokens / dt / batch, 1)}


def main() -> None:
    from chatsmith.runtime import resolve_device
    from chatsmith.training.loop import RunFlags
    from chatsmith.training.pretrain import PRETRAIN_DEFAULTS, pretrain

    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = resolve_device(a.device)
    args = dict(PRETRAIN_DEFAULTS, preset=a.preset, seq_len=a.seq_len, batch_size=a.batch_size,
                vocab_size=a.vocab_size, eval_every=10**9, save_every=10**9, lr=6e-4,
                warmup_steps=50)
    flags = RunFlags(out=a.out, max_minutes=a.minutes, device=device, seed=1337)
    t0 = time.time()
    result = pretrain(args, flags, {"max_minutes": a.minutes}, quiet=True)
    wall = time.time() - t0
    records = [json.loads(x) for x in (a.out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    steady = statistics.median(speeds[len(speeds) // 2 :])  # after compile and warm-up
    from chatsmith.models import build_model, model_card
    from chatsmith.training.pretrain import model_config

    cfg = model_config(args, json.loads((a.out / "run.json").read_text())["model"]["vocab_size"])
    card = model_card(cfg, build_model(cfg))
    peak = peak_flops()
    summary = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "model": {k: card[k] for k in ("parameters", "flops_per_token", "layers", "width",
                                       "context", "vocab")},
        "train": {
            "batch": a.batch_size, "seq_len": a.seq_len, "steps": result.step,
            "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1),
            "steady_tokens_per_s": round(steady),
            "mfu": round(card["flops_per_token"] * steady / peak, 4) if peak else None,
            "val_bpb": round(result.final_eval["val_bpb"], 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.type == "cuda" else None,
        },
        "generate": [bench_generator(a.out, b, a.new_tokens, str(device)) for b in (1, 32)],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

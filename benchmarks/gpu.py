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


def bench_generator(loaded, batch: int, new_tokens: int, cuda_graph: bool = True) -> dict:
    """Decode `new_tokens` for `batch` copies of a prompt through the shared Engine."""
    from chatsmith.inference.engine import Engine, SamplingParams

    tok = loaded.tokenizer
    engine = Engine(loaded.model, [tok.end_id, tok.bos_id], batch, cuda_graph=cuda_graph)
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
    return {
        "batch": batch,
        "cuda_graph": engine.static is not None,
        "tokens": tokens,
        "seconds": round(dt, 3),
        "tokens_per_s": round(tokens / dt, 1),
        "per_sequence_tokens_per_s": round(tokens / dt / batch, 1),
    }


def random_run(preset: str, vocab_size: int, seq_len: int, device):
    """A model of the benchmark's shape with random weights: decode speed does not depend on
    what the weights are, and this skips training."""
    from chatsmith.data import chitchat
    from chatsmith.inference.loading import LoadedRun
    from chatsmith.models import build_model, config_from_preset
    from chatsmith.tokenizer import Tokenizer

    tok = Tokenizer.train(chitchat.documents("val"), vocab_size)
    cfg = config_from_preset(preset, vocab_size=tok.vocab_size, max_seq_len=seq_len)
    model = build_model(cfg).to(device, dtype=torch.bfloat16 if device.type == "cuda" else None)
    return LoadedRun(Path("random"), model.eval(), tok, cfg, {}, 0)


def main() -> None:
    from chatsmith.inference.loading import load_run
    from chatsmith.reporting import Reporter
    from chatsmith.runtime import resolve_device
    from chatsmith.training.config import PretrainConfig, RunConfig
    from chatsmith.training.pretrain import pretrain

    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-bench"))
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--generate-only",
        action="store_true",
        help="skip training; time the generator on random weights",
    )
    a = ap.parse_args()
    device = resolve_device(a.device)
    if a.generate_only:
        from chatsmith.inference.engine import Engine, SamplingParams

        loaded = random_run(a.preset, a.vocab_size, a.seq_len, device)
        gen = [bench_generator(loaded, b, a.new_tokens, g) for b in (1, 32) for g in (False, True)]
        greedy = SamplingParams(max_tokens=64, temperature=0)
        prompt = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode("Hello there")]
        eager = Engine(loaded.model, [], 1).generate_many([prompt], greedy)[0].tokens
        graph = Engine(loaded.model, [], 1, cuda_graph=True).generate_many([prompt], greedy)[0]
        gen.append(
            {
                "greedy_tokens_equal_eager_vs_graph": sum(
                    a == b for a, b in zip(eager, graph.tokens)
                ),
                "of": len(eager),
            }
        )
        print(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name()
                    if device.type == "cuda"
                    else str(device),
                    "torch": torch.__version__,
                    "generate": gen,
                },
                indent=2,
            )
        )
        return
    args = PretrainConfig(
        preset=a.preset,
        seq_len=a.seq_len,
        batch_size=a.batch_size,
        vocab_size=a.vocab_size,
        eval_every=10**9,
        save_every=10**9,
        lr=6e-4,
        warmup_steps=50,
    )
    run = RunConfig(out=a.out, max_minutes=a.minutes, device=device)
    t0 = time.time()
    result = pretrain(args, run, Reporter(quiet=True))
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
        "model": {
            k: card[k]
            for k in ("parameters", "flops_per_token", "layers", "width", "context", "vocab")
        },
        "train": {
            "batch": a.batch_size,
            "seq_len": a.seq_len,
            "steps": result.step,
            "train_seconds": round(result.train_seconds, 1),
            "wall_seconds": round(wall, 1),
            "steady_tokens_per_s": round(steady),
            "mfu": round(card["flops_per_token"] * steady / peak, 4) if peak else None,
            "val_bpb": round(result.final_eval["val_bpb"], 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device.type == "cuda"
            else None,
        },
        "generate": [
            bench_generator(load_run(a.out, str(device)), b, a.new_tokens) for b in (1, 32)
        ],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

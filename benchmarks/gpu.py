"""GPU benchmark (issue 14): training and decoding figures in one run, written as one JSON.

    python benchmarks/gpu.py --all --json benchmarks/results/gpu_issue14.json     # < 8 min
    python benchmarks/gpu.py --all --dry-run                                      # CPU, tiny

`--all` runs, at GPT-2-small shape (12 layers, width 768, context 1024, 32,768-token vocab):
- training through the real `pretrain` stage on the built-in corpus, once with AdamW and once
  with Muon (`--train-minutes` each): steady tokens/s after compile and warm-up, and MFU =
  training FLOPs per token x tokens/s / the card's peak dense bf16 (H100/H200 SXM: 989 TFLOP/s,
  NVIDIA datasheet);
- decoding through the real `Engine` on a model of that shape with random weights (speed does
  not depend on what the weights are): a 64-token prompt and 256 new tokens at batch 1 and 32,
  for each decode path (eager, CUDA graph, compiled step inside the graph), and the time to
  the first token of a 512-token prompt;
- greedy tokens of every path compared with the eager path's.
`--train` or `--decode` runs one half. `--dry-run` runs every code path with tiny shapes on
whatever device there is (the CPU here), so that GPU minutes are not spent finding bugs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

FULL = dict(
    preset="gpt2-small",
    seq_len=1024,
    batch_size=32,
    vocab_size=32768,
    prompt=64,
    new_tokens=256,
    batches=(1, 32),
    ttft_prompt=512,
    ttft_repeats=20,
)
# every code path, in seconds: a 4-layer, 128-wide model on 128-token sequences
TINY = dict(
    preset="narrow",
    seq_len=128,
    batch_size=4,
    vocab_size=512,
    prompt=8,
    new_tokens=16,
    batches=(1, 4),
    ttft_prompt=32,
    ttft_repeats=3,
)


def peak_flops() -> float | None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_paths(device: torch.device) -> dict[str, dict]:
    """Engine options of each decode path this device has."""
    if device.type == "cuda":
        return {
            "eager": {},
            "graph": {"cuda_graph": True},
            "compiled_graph": {"cuda_graph": True, "compile": True},
        }
    return {"eager": {}, "compiled": {"compile": True}}  # no CUDA graphs off the GPU


def random_run(shape: dict, device: torch.device):
    """A model of the benchmark's shape with random weights and a chitchat tokenizer."""
    from chatsmith.data import chitchat
    from chatsmith.inference.loading import LoadedRun
    from chatsmith.models import build_model, config_from_preset
    from chatsmith.tokenizer import Tokenizer

    tok = Tokenizer.train(chitchat.documents("val"), shape["vocab_size"])
    cfg = config_from_preset(
        shape["preset"], vocab_size=tok.vocab_size, max_seq_len=shape["seq_len"]
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(cfg).to(device, dtype=dtype).eval()
    return LoadedRun(Path("random"), model, tok, cfg, {}, 0)


def time_decode(loaded, engine, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Prefill `batch` random prompts, then time greedy decoding of `new_tokens` for all of them
    (no stop tokens: the batch stays full). Returns tokens/s and the tokens themselves."""
    from chatsmith.inference.engine import SamplingParams

    device = engine.device
    g = torch.Generator().manual_seed(batch)
    prompts = torch.randint(3, loaded.cfg.vocab_size, (batch, prompt_len), generator=g).tolist()
    params = SamplingParams(max_tokens=new_tokens, temperature=0)
    engine.generate_many(prompts, SamplingParams(max_tokens=8, temperature=0))  # warm-up
    seqs = engine.add_many(prompts, [params] * batch)
    engine.step()  # the first tokens come out of the prefill
    sync(device)
    t0 = time.perf_counter()
    steps = 0
    while engine.live:
        engine.step()
        steps += 1
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "batch": batch,
        "steps": steps,
        "tokens_per_s": round(batch * steps / dt, 1),
        "ms_per_step": round(1000 * dt / steps, 3),
        "tokens": [s.tokens for s in seqs],
    }


def time_ttft(loaded, engine, prompt_len: int, repeats: int) -> dict:
    """Time from a prompt arriving to its first token (prefill + sampling), median of repeats."""
    from chatsmith.inference.engine import SamplingParams

    device = engine.device
    g = torch.Generator().manual_seed(1)
    params = SamplingParams(max_tokens=2, temperature=0)
    times = []
    for i in range(repeats + 2):  # two warm-ups
        prompt = torch.randint(3, loaded.cfg.vocab_size, (prompt_len,), generator=g).tolist()
        sync(device)
        t0 = time.perf_counter()
        seq = engine.add(prompt, params)
        engine.step()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
        engine.release(seq)
    return {
        "prompt_tokens": prompt_len,
        "ttft_ms_median": round(1000 * statistics.median(times), 3),
    }


def bench_decode(shape: dict, device: torch.device) -> dict:
    from chatsmith.inference.engine import Engine

    loaded = random_run(shape, device)
    out: dict = {"paths": {}, "ttft": {}, "greedy_equal_to_eager": {}}
    reference: dict[int, list] = {}
    for name, opts in decode_paths(device).items():
        try:  # a path that fails is recorded, and the others still run: GPU minutes are scarce
            for batch in shape["batches"]:
                t0 = time.perf_counter()
                engine = Engine(loaded.model, stop_ids=[], max_batch=batch, **opts)
                res = time_decode(loaded, engine, batch, shape["prompt"], shape["new_tokens"])
                res["setup_and_warmup_s"] = round(time.perf_counter() - t0, 1)
                tokens = res.pop("tokens")
                if name == "eager":
                    reference[batch] = tokens
                elif batch in reference:
                    same = sum(a == b for a, b in zip(tokens, reference[batch]))
                    out["greedy_equal_to_eager"][f"{name}_batch{batch}"] = f"{same}/{batch} rows"
                out["paths"].setdefault(name, []).append(res)
                print(json.dumps({"decode": name, **res}), flush=True)
            engine = Engine(loaded.model, stop_ids=[], max_batch=1, **opts)
            ttft = time_ttft(loaded, engine, shape["ttft_prompt"], shape["ttft_repeats"])
            out["ttft"][name] = ttft
            print(json.dumps({"ttft": name, **ttft}), flush=True)
        except Exception as e:
            out.setdefault("errors", {})[name] = repr(e)
            print(json.dumps({"decode": name, "error": repr(e)}), flush=True)
    out["model"] = {
        "preset": shape["preset"],
        "context": shape["seq_len"],
        "vocab": loaded.cfg.vocab_size,
        "dtype": str(next(loaded.model.parameters()).dtype).replace("torch.", ""),
        "prompt_tokens": shape["prompt"],
        "new_tokens": shape["new_tokens"],
    }
    return out


def bench_train(shape: dict, device: torch.device, minutes: float, out_dir: Path) -> list[dict]:
    """The real `pretrain` stage for `minutes` with each optimizer; steady tokens/s and MFU."""
    from chatsmith.training.config import PretrainConfig

    results = []
    for optimizer in ("adamw", "muon"):
        args = PretrainConfig(
            preset=shape["preset"],
            seq_len=shape["seq_len"],
            batch_size=shape["batch_size"],
            vocab_size=shape["vocab_size"],
            optimizer=optimizer,
            eval_every=10**9,
            save_every=10**9,
            lr=6e-4,
            warmup_steps=50,
        )
        try:
            res = train_once(args, out_dir / optimizer, device, minutes)
        except Exception as e:  # recorded; the other optimizer still runs
            res = {"optimizer": optimizer, "error": repr(e)}
        results.append(res)
        print(json.dumps({"train": res}), flush=True)
    return results


def train_once(args, out: Path, device: torch.device, minutes: float) -> dict:
    from chatsmith.models import build_model, model_card
    from chatsmith.reporting import Reporter
    from chatsmith.training.config import RunConfig
    from chatsmith.training.pretrain import model_config, pretrain

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    result = pretrain(
        args, RunConfig(out=out, max_minutes=minutes, device=device), Reporter(quiet=True)
    )
    wall = time.time() - t0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    steady = statistics.median(speeds[len(speeds) // 2 :]) if speeds else float("nan")
    cfg = model_config(args, json.loads((out / "run.json").read_text())["model"]["vocab_size"])
    card = model_card(cfg, build_model(cfg))
    peak = peak_flops()
    return {
        "optimizer": args.optimizer,
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "parameters": card["parameters"],
        "flops_per_token": card["flops_per_token"],
        "steps": result.step,
        "train_seconds": round(result.train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "steady_tokens_per_s": round(steady),
        "mfu": round(card["flops_per_token"] * steady / peak, 4) if peak else None,
        "val_bpb": round(result.final_eval["val_bpb"], 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
    }


def main() -> None:
    from chatsmith.runtime import resolve_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="training and decoding figures")
    ap.add_argument("--train", action="store_true", help="training figures only")
    ap.add_argument("--decode", action="store_true", help="decoding figures only")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes: check every path")
    ap.add_argument("--train-minutes", type=float, default=1.25, help="per optimizer")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, help="folder for the training runs (default: temporary)")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    if not (a.all or a.train or a.decode):
        ap.error("say what to run: --all, --train or --decode")
    device = resolve_device(a.device)
    if a.dry_run and device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: a second thread only contends on shared cores
    shape = TINY if a.dry_run else FULL
    minutes = 0.1 if a.dry_run else a.train_minutes
    started = time.time()
    summary: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "dry_run": a.dry_run,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def save() -> str:  # after each half, so that a run cut short keeps what it measured
        summary["wall_seconds"] = round(time.time() - started, 1)
        text = json.dumps(summary, indent=2)
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(text + "\n")
        return text

    if a.all or a.decode:
        summary["decode"] = bench_decode(shape, device)
        save()
    if a.all or a.train:
        with tempfile.TemporaryDirectory(prefix="chatsmith-gpu-") as tmp:
            summary["train"] = bench_train(shape, device, minutes, a.out or Path(tmp))
    print(save())


if __name__ == "__main__":
    main()

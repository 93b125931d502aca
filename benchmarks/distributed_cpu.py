"""Scale-out benchmarks on CPU: `chatsmith tokenize` throughput and 2-process step time.

    python benchmarks/distributed_cpu.py tokenize [--workers 1 2]
    python benchmarks/distributed_cpu.py steps [--steps 30]
    python benchmarks/distributed_cpu.py gpu [--steps 30]

`tokenize` writes the built-in corpus (~12 MB) to a file and times the shard writer on it with
each number of worker processes, next to the in-memory tokenizing that text runs use.
`steps` runs the same pretraining (narrow preset, global batch 16 x 256) as one process (with
one and two threads) and as `torchrun --nproc-per-node 2` with DDP and FSDP2 (one thread per
process), and reports the median step time from each run's metrics. `gpu` compares one GPU
through the plain path with one GPU through FSDP2 (a group of one), by median tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_tokenize(workers: list[int]) -> dict:
    from chatsmith.data import chitchat
    from chatsmith.data.shards import write_shards
    from chatsmith.data.sources import iter_documents
    from chatsmith.data.tokens import tokenize_documents
    from chatsmith.tokenizer import Tokenizer

    tmp = Path(tempfile.mkdtemp())
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n\n".join(chitchat.documents("train")))
    docs = list(iter_documents(corpus))
    mb = sum(len(d.encode()) for d in docs) / 1e6
    tok = Tokenizer.train(docs[:2000], 2048)
    tok_file = tok.save(tmp)
    t0 = time.perf_counter()
    tokens = len(tokenize_documents(tok, docs))
    result = {"mb": mb, "tokens": tokens, "in_memory_mb_s": mb / (time.perf_counter() - t0)}
    for n in workers:
        t0 = time.perf_counter()
        write_shards(iter_documents(corpus), tok_file, tmp / f"shards{n}", 10**6, 0.005, n)
        result[f"shards_{n}_workers_mb_s"] = mb / (time.perf_counter() - t0)
    return result


def _median_step(run: Path) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    clock = [r["elapsed_s"] for r in records if "elapsed_s" in r]
    steps = [b - a for a, b in zip(clock, clock[1:])][2:]  # the first steps warm up
    return statistics.median(steps)


def bench_steps(steps: int) -> dict:
    tmp = Path(tempfile.mkdtemp())
    common = ["pretrain", f"--max-steps={steps}", "--log-every=1", "--eval-every=100000"]
    common += ["--save-every=100000", "--device=cpu"]
    one = [sys.executable, "-m", "chatsmith"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    two += ["-m", "chatsmith"]
    runs = {  # name: (command, extra flags, threads per process)
        "1 process, 1 thread": (one, [], 1),
        "1 process, 2 threads": (one, [], 2),
        "2 processes, DDP": (two, [], 1),
        "2 processes, FSDP2": (two, ["--parallel=fsdp"], 1),
    }
    result = {}
    for i, (name, (cmd, extra, threads)) in enumerate(runs.items()):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        out = tmp / f"run{i}"
        proc = subprocess.run([*cmd, *common, *extra, "--out", str(out)], env=env, text=True)
        if proc.returncode:
            raise SystemExit(f"{name} failed")
        result[name] = _median_step(out)
    return result


def bench_gpu(steps: int) -> dict:
    tmp = Path(tempfile.mkdtemp())
    common = ["-m", "chatsmith", "pretrain", f"--max-steps={steps}", "--log-every=1"]
    common += ["--eval-every=100000", "--save-every=100000", "--device=cuda"]
    common += ["--preset=gpt2-small", "--seq-len=1024", "--batch-size=16"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = {}
    for name, extra in {"plain": [], "fsdp2, 1 process": ["--parallel=fsdp"]}.items():
        out = tmp / name.replace(" ", "_").replace(",", "")
        cmd = [sys.executable, *common, *extra, "--out", str(out)]
        if subprocess.run(cmd, env=env).returncode:
            raise SystemExit(f"{name} failed")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][3:]
        result[name] = statistics.median(rates)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["tokenize", "steps", "gpu"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    bench = {"tokenize": lambda: bench_tokenize(a.workers), "steps": lambda: bench_steps(a.steps)}
    figures = bench.get(a.what, lambda: bench_gpu(a.steps))()
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), **figures}, indent=2))


if __name__ == "__main__":
    main()

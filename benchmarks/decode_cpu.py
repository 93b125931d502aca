"""CPU decode speed through the real Engine: tokens/s at several batch sizes.

Loads a run folder, prefills `batch` copies of a prompt (each row a different prompt so the
rows differ), then times `--new-tokens` decode steps with no stop tokens: greedy, or sampled
with `--temperature/--top-k/--top-p` (the chat's defaults: 0.8, 50, 0.95), seeded per row.
Prints one JSON object per batch size, with a digest of every generated token, so that two
versions of the code can be checked to produce the same tokens as well as timed against each
other.

    python benchmarks/decode_cpu.py --run /tmp/q --batches 1 16 --new-tokens 128

Only public Engine calls are used, so the same script times older code for the side-by-side
(without --compile, which older code lacks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument(
        "--compile", action="store_true", help="Engine(compile=True): the compiled decode step"
    )
    ap.add_argument("--repeats", type=int, default=1, help="timed passes per batch size")
    ap.add_argument(
        "--temperature", type=float, default=0.0, help="0: greedy (default); else sampled"
    )
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=1.0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from chatsmith.inference.engine import Engine, SamplingParams
    from chatsmith.inference.loading import load_run

    t_load = time.perf_counter()
    run = load_run(a.run, "cpu")
    vocab = run.cfg.vocab_size
    for batch in a.batches:
        extra = {"compile": True} if a.compile else {}  # older code has no such option
        engine = Engine(run.model, stop_ids=[], max_batch=batch, cuda_graph=True, **extra)
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(3, vocab, (batch, a.prompt_tokens), generator=g).tolist()
        # seeded per row, so that sampled runs are repeatable (and comparable across versions)
        params = [
            SamplingParams(
                max_tokens=a.new_tokens,
                temperature=a.temperature,
                top_k=a.top_k,
                top_p=a.top_p,
                seed=i,
            )
            for i in range(batch)
        ]
        t0 = time.perf_counter()
        engine.generate_many(prompts, params)  # warm-up (and any compilation)
        warm = time.perf_counter() - t0
        best = None
        for _ in range(a.repeats):
            for p, sp in zip(prompts, params):
                engine.add(p, sp)
            engine.step()  # the first tokens come from the prefill's logits
            seqs = list(engine.live)
            steps = 0
            t0 = time.perf_counter()
            while engine.live:
                engine.step()
                steps += 1
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        digest = hashlib.sha256(json.dumps([s.tokens for s in seqs]).encode()).hexdigest()[:16]
        print(
            json.dumps(
                {
                    "batch": batch,
                    "prompt_tokens": a.prompt_tokens,
                    "steps": steps,
                    "tokens_per_s": round(batch * steps / best, 1),
                    "ms_per_step": round(1000 * best / steps, 3),
                    "warmup_s": round(warm, 2),
                    "tokens_digest": digest,
                }
            ),
            flush=True,
        )
    print(json.dumps({"total_s": round(time.perf_counter() - t_load, 2)}), flush=True)


if __name__ == "__main__":
    main()

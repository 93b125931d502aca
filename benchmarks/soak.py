"""Soak test for `chatsmith serve`: mixed traffic with failures, bounded in time and count.

Serves a run in this process on a loopback port and, for `--minutes` (or `--max-requests`),
keeps `--clients` clients busy with a random mix (seeded): streaming and whole chat and text
completions, clients that hang up mid-stream or mid-body, bad bodies (broken JSON, wrong
types, a lone surrogate, text/plain, oversized) and requests whose forward pass fails.

Failures are injected by wrapping the engine's model in this script only (a prompt holding a
poison character makes its prefill, or a later decode step, raise as an out-of-memory error
would); nothing a client of a real server sends can trigger it.

Reports requests served, answers by status, lost requests (a valid request without a complete
answer: must be 0), engine slots in use at the end (must be 0), failures logged against
failures injected, and the process's resident memory at start and end.

    python benchmarks/soak.py                         # 2 minutes, builds a small model
    python benchmarks/soak.py --run runs/my-run --minutes 10 --clients 16 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

PREFILL_POISON = "\u2603"  # snowman: this prompt's prefill fails
DECODE_POISON = "\u2604"  # comet: this sequence's decode steps fail
JSON_HEADERS = {"Content-Type": "application/json"}


class FaultyModel:
    """The engine's model, failing for prompts that hold a poison character (this script only)."""

    def __init__(self, model, prefill_id: int, decode_id: int):
        self.model, self.prefill_id, self.decode_id = model, prefill_id, decode_id
        self.poisoned_slots: set[int] = set()
        self.injected = Counter()

    def __call__(self, x, cache=None, rows=None, **kw):
        if x.shape[1] > 1:  # prefill: (B, S) prompts
            if (x == self.prefill_id).any():
                self.injected["prefill"] += 1
                raise RuntimeError("out of memory (injected by soak.py)")
            bad = (x == self.decode_id).any(-1).tolist()
            for row, is_bad in zip(rows.tolist(), bad):
                (self.poisoned_slots.add if is_bad else self.poisoned_slots.discard)(row)
        elif self.poisoned_slots & set(rows.tolist()):
            self.injected["decode"] += 1
            raise RuntimeError("out of memory while decoding (injected by soak.py)")
        return self.model(x, cache=cache, rows=rows, **kw)


class CountingHandler(logging.Handler):
    """Counts error records (keeping them would keep their tracebacks' frames, and tensors)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record):
        self.count += 1


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def words(rng: random.Random) -> str:
    pool = ["hello", "how", "are", "you", "today", "the", "weather", "is", "nice", "tell", "me"]
    return " ".join(rng.choice(pool) for _ in range(rng.randint(2, 12)))


# ---- one request of each kind: returns (kind, outcome) ------------------------------------------


async def valid(client: httpx.AsyncClient, rng: random.Random, max_tokens: int) -> str:
    """A valid request: "200" for a complete answer, "429" for a busy server, else "lost:..."."""
    stream = rng.random() < 0.6
    if rng.random() < 0.5:
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": words(rng)}]}
    else:
        path = "/v1/completions"
        body = {"prompt": words(rng), "n": rng.choice([1, 1, 2])}
    body.update(max_tokens=rng.randint(1, max_tokens), temperature=rng.choice([0, 0.8, 1e-45]))
    body["stream"] = stream
    if not stream:
        r = await client.post(path, json=body)
        if r.status_code == 200 and r.json()["choices"]:
            return "200"
        return "429" if r.status_code == 429 else f"lost:{r.status_code}"
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return "429" if r.status_code == 429 else f"lost:{r.status_code}"
        last, errors = "", 0
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                last = line
                errors += '"error"' in line
    return "200" if last == "data: [DONE]" and not errors else "lost:stream"


async def hang_up_mid_stream(client: httpx.AsyncClient, rng: random.Random) -> str:
    body = {"prompt": words(rng), "max_tokens": 64, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        seen = 0
        async for _ in r.aiter_lines():
            seen += 1
            if seen >= rng.randint(1, 4):
                break  # leaving the block closes the connection mid-stream
    return "hung up"


async def hang_up_mid_body(host: str, port: int, rng: random.Random) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"prompt": words(rng)}).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body) + 50}\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    await writer.drain()
    await asyncio.sleep(rng.random() * 0.2)
    writer.close()
    return "hung up"


BAD_BODIES = [
    ("/v1/chat/completions", b"{not json", JSON_HEADERS),
    ("/v1/chat/completions", b'{"messages": "hi"}', JSON_HEADERS),
    (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
        JSON_HEADERS,
    ),
    ("/v1/completions", b'{"prompt": "hi", "max_tokens": -3}', JSON_HEADERS),
    (
        "/v1/completions",
        b'{"prompt": "hi", "stop": ["a", "\\udfff"], "stream": true}',
        JSON_HEADERS,
    ),
    ("/v1/completions", b'{"prompt": "hi"}', {"Content-Type": "text/plain"}),
    ("/v1/completions", b'{"prompt": "' + b"x" * 120_000 + b'"}', JSON_HEADERS),
]


async def bad_body(client: httpx.AsyncClient, rng: random.Random) -> str:
    path, content, headers = rng.choice(BAD_BODIES)
    r = await client.post(path, content=content, headers=headers)
    return str(r.status_code)


async def poisoned(client: httpx.AsyncClient, rng: random.Random, poison: str) -> str:
    body = {"prompt": words(rng) + " " + poison, "max_tokens": 8, "stream": rng.random() < 0.5}
    r = await client.post("/v1/completions", json=body)
    if body["stream"] and r.status_code == 200:  # the error travels as an event
        return "500 (in stream)" if '"server_error"' in r.text else "lost:poison-stream"
    return str(r.status_code)


# ---- the soak -----------------------------------------------------------------------------------


async def soak(url: str, host: str, port: int, args) -> tuple[Counter, int, list[float]]:
    outcomes: Counter = Counter()  # (kind, outcome) -> count
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    started = 0

    async def worker(seed: int):
        nonlocal started
        wrng = random.Random(seed)
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            while time.monotonic() < deadline and started < args.max_requests:
                started += 1
                roll = wrng.random()
                try:
                    if roll < 0.60:
                        kind, out = "valid", await valid(client, wrng, args.max_tokens)
                    elif roll < 0.70:
                        kind, out = "hang up mid-stream", await hang_up_mid_stream(client, wrng)
                    elif roll < 0.75:
                        kind, out = "hang up mid-body", await hang_up_mid_body(host, port, wrng)
                    elif roll < 0.88:
                        kind, out = "bad body", await bad_body(client, wrng)
                    elif roll < 0.94:
                        kind = "injected prefill failure"
                        out = await poisoned(client, wrng, PREFILL_POISON)
                    else:
                        kind = "injected decode failure"
                        out = await poisoned(client, wrng, DECODE_POISON)
                except httpx.HTTPError as e:
                    kind, out = "transport error", type(e).__name__
                outcomes[(kind, out)] += 1

    async def sample_memory():  # resident memory every 10 s: flat, or growing?
        while time.monotonic() < deadline and started < args.max_requests:
            await asyncio.sleep(10)
            rss_samples.append(round(rss_mb(), 1))

    rss_samples: list[float] = []
    sampler = asyncio.ensure_future(sample_memory())
    await asyncio.gather(*(worker(rng.randrange(2**32)) for _ in range(args.clients)))
    sampler.cancel()
    return outcomes, started, rss_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run folder to serve (default: build a small one)")
    ap.add_argument("--depth", type=int, default=2, help="model depth when building one")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--max-requests", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not 0 < args.minutes <= 60 or args.max_requests < 1 or args.clients < 1:
        sys.exit("error: --minutes must be in (0, 60], --max-requests and --clients >= 1")

    import torch

    from chatsmith.inference.loading import load_run
    from chatsmith.serving.app import create_app
    from chatsmith.serving.config import ServeLimits
    from chatsmith.serving.live import LiveServer

    torch.set_num_threads(1)
    tmp = None
    run = args.run
    if run is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from serve_load import build_run

        tmp = tempfile.TemporaryDirectory()
        run = Path(tmp.name) / "soak"
        build_run(run, args.depth, 256)

    loaded = load_run(run, "cpu")
    limits = ServeLimits(
        max_batch=args.max_batch,
        max_queue=4 * args.max_batch,
        max_tokens=64,
        max_body_bytes=100_000,
    )
    app = create_app(loaded, limits)
    server = app.state.server
    tok = loaded.tokenizer
    faulty = FaultyModel(
        server.engine.model, tok.encode(PREFILL_POISON)[-1], tok.encode(DECODE_POISON)[-1]
    )
    server.engine.model = faulty
    logged = CountingHandler()
    serve_log = logging.getLogger("chatsmith.serve")
    serve_log.addHandler(logged)
    serve_log.propagate = False  # counted here, not printed: hundreds of tracebacks otherwise

    with LiveServer(app) as srv:
        httpx.post(srv.url + "/v1/completions", json={"prompt": "warm up", "max_tokens": 4})
        rss_start = rss_mb()
        t0 = time.monotonic()
        outcomes, started, rss_samples = asyncio.run(soak(srv.url, srv.host, srv.port, args))
        wall = time.monotonic() - t0
        # whatever is still in flight on the server side must drain, then nothing is held
        drained = False
        for _ in range(200):
            h = httpx.get(srv.url + "/health").json()
            if h["running"] == 0 and h["waiting"] == 0:
                drained = True
                break
            time.sleep(0.05)
        health = httpx.get(srv.url + "/health")
        rss_end = rss_mb()
        engine = server.engine
        slots_in_use = engine.max_batch - len(engine.free)

    by_status = Counter()
    for (_kind, out), n in outcomes.items():
        by_status[out.split(" (")[0]] += n
    lost = sum(n for (kind, out), n in outcomes.items() if out.startswith("lost"))
    failed = sum(
        n for (kind, out), n in outcomes.items() if kind.startswith("injected") and "500" in out
    )
    served = sum(n for (kind, out), n in outcomes.items() if kind == "valid" and out == "200")
    result = {
        "requests": started,
        "wall_seconds": round(wall, 1),
        "valid_served": served,
        "lost_valid_requests": lost,
        "outcomes": {f"{k} -> {o}": n for (k, o), n in sorted(outcomes.items())},
        "by_status": dict(sorted(by_status.items())),
        # raised forward passes (a batched pass that fails is retried per sequence, so one
        # poisoned request may raise twice), requests failed by them, and log records
        "injected_raises": dict(faulty.injected),
        "poisoned_requests_answered_500": failed,
        "failures_logged": logged.count,
        "slots_in_use_at_end": slots_in_use,
        "live_sequences_at_end": len(engine.live),
        "drained": drained,
        "health_at_end": health.status_code,
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_end": round(rss_end, 1),
        "rss_mb_every_10s": rss_samples,
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    if tmp is not None:
        tmp.cleanup()
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = lost == 0 and slots_in_use == 0 and drained and health.status_code == 200
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

"""Load test for `chatsmith serve`: concurrent streaming clients on loopback.

Starts the real server in a subprocess, then for each concurrency level runs that many clients,
each sending streaming chat completions back to back. Reports aggregate completion tokens/s,
time to first token and per-token latency percentiles, and lost requests (any request that
did not end with a 200 and `data: [DONE]`).

    flock /tmp/chatsmith-bench.lock python benchmarks/serve_load.py            # builds a model
    python benchmarks/serve_load.py --run runs/my-run --levels 1 4 16 64

With --client openai the clients are the `openai` package's async client, as a user's program
would be (heavier on the shared cores than the raw-socket client). Each level also reports the
server's per-token overhead: its process CPU time outside the engine's prefill and decode calls
(HTTP, SSE chunks, detokenising, the hand-off to the event loop), per generated token.

Against `chatsmith bench`: with --bench BENCH.json the concurrency levels default to the batch
sizes the bench measured, and each level's tokens/s is set beside what the bench predicts for
a server holding that many requests of the measured shape (mean prompt and reply tokens):
reply / (prompt / prefill tokens/s + reply / decode tokens/s), `evaluation.cost`.
With --bench-live it runs `chatsmith bench` at each level's batch size (and the test's prompt
length and --max-tokens) right before the level instead, and --repeats N alternates the two
N times: on a shared machine the load drifts between two measurements minutes apart.

    python benchmarks/serve_load.py --run RUN --bench-live --repeats 3 --levels 1 4 16

Without --run (or with a --run folder that does not exist yet: it is then kept) it builds a
depth-8 model (d_model 512, 8 layers, 4096-token vocabulary, 27.4M parameters) with random
weights: the same compute per token as a trained model of that shape (replies are gibberish
and may end early on a randomly drawn end token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_run(out: Path, depth: int, seq_len: int) -> None:
    """A run folder with a chitchat tokenizer and randomly initialised weights.

    Serving speed depends on the model's shape, not on what it has learned, and training even
    a few steps of this size takes minutes on 2 shared cores.
    """
    import torch

    from chatsmith.checkpoint import save_checkpoint
    from chatsmith.data import chitchat
    from chatsmith.files import write_json_atomic
    from chatsmith.models import build_model, config_from_depth
    from chatsmith.tokenizer import Tokenizer

    print(f"building a depth-{depth} model with random weights in {out}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.train(chitchat.documents("train"), 4096)
    tok.save(out)
    cfg = config_from_depth(depth, vocab_size=tok.vocab_size, max_seq_len=seq_len)
    torch.manual_seed(0)
    model = build_model(cfg)
    write_json_atomic(
        out / "run.json", {"stage": "benchmark", "args": {}, "flags": {}, "model": cfg.to_dict()}
    )
    save_checkpoint(out, 0, model, cfg, {}, keep_last=1)


CONTENT = b'"content":"'
EMPTY = b'"content":""'
USAGE = re.compile(rb'"completion_tokens":(\d+)')
PROMPT_USAGE = re.compile(rb'"prompt_tokens":(\d+)')


async def one_request(host: str, port: int, body: dict) -> dict:
    """One streaming chat completion over a raw socket.

    The load generator shares the 2 cores with the server, so it does the least work it can:
    no HTTP library, no JSON parsing per chunk, just a scan of the bytes for content deltas,
    stamped with the time they arrived.
    """
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    stamps: list[float] = []
    data = b""
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(head + payload)
        await writer.drain()
        while True:
            block = await reader.read(65536)
            if not block:
                break
            now = time.perf_counter()
            seen = len(data)
            data += block
            # count the deltas that end in the new bytes (a marker may straddle two reads)
            region = data[max(0, seen - len(CONTENT)) :]
            n = region.count(CONTENT) - region.count(EMPTY)
            stamps.extend([now] * n)
        writer.close()
    except OSError as e:
        return {"ok": False, "error": repr(e)}
    status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else None
    used = USAGE.findall(data)
    prompt = PROMPT_USAGE.findall(data)
    ok = status == 200 and b"data: [DONE]" in data and bool(used)
    gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
    return {
        "ok": ok,
        "status": status,
        "tokens": int(used[-1]) if used else 0,
        "prompt_tokens": int(prompt[-1]) if prompt else 0,
        "ttft": (stamps[0] - start) if stamps else None,
        "gaps": gaps,
        "seconds": time.perf_counter() - start,
    }


async def openai_request(client, body: dict) -> dict:
    """One streaming chat completion through the `openai` package's async client: what a user's
    program does (it parses every chunk into objects, so it costs the shared cores more)."""
    import openai

    start = time.perf_counter()
    stamps: list[float] = []
    tokens = prompt = None
    try:
        stream = await client.chat.completions.create(**body)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                stamps.append(time.perf_counter())
            if chunk.usage is not None:
                tokens, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
    except (OSError, openai.APIError) as e:
        return {"ok": False, "error": repr(e)}
    gaps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
    return {
        "ok": tokens is not None,
        "status": 200,
        "tokens": tokens or 0,
        "prompt_tokens": prompt or 0,
        "ttft": (stamps[0] - start) if stamps else None,
        "gaps": gaps,
        "seconds": time.perf_counter() - start,
    }


async def run_level(
    host: str,
    port: int,
    clients: int,
    requests: int,
    max_tokens: int,
    temperature: float = 1.0,
    client_kind: str = "raw",
) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[dict] = []

    async def worker():
        client = None
        if client_kind == "openai":  # one client (and connection pool) per simulated user
            import openai

            client = openai.AsyncOpenAI(
                base_url=f"http://{host}:{port}/v1", api_key="none", max_retries=0, timeout=120
            )
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            body = {
                "model": "bench",
                "max_tokens": max_tokens,
                "temperature": temperature,
                "seed": i,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": f"Hi! Tell me a story, number {i}."}],
            }
            if client is None:
                results.append(await one_request(host, port, body))
            else:
                results.append(await openai_request(client, body))
        if client is not None:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "clients": clients,
        "requests": requests,
        "completed": len(ok),
        "lost": requests - len(ok),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_ms": {f"p{q}": round(1000 * pct(ttft, q), 1) for q in (50, 90, 99)},
        "token_ms": {f"p{q}": round(1000 * pct(gaps, q), 1) for q in (50, 90, 99)},
        "mean_tokens_per_request": round(statistics.mean([r["tokens"] for r in ok]), 1)
        if ok
        else 0,
        "mean_prompt_tokens": round(statistics.mean([r["prompt_tokens"] for r in ok]), 1)
        if ok
        else 0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bench(run: Path, batch: int, prompt: int, new: int, args, out: Path) -> dict:
    """`chatsmith bench` at one batch size, in its own process while the server sits idle."""
    cmd = [sys.executable, "-m", "chatsmith.cli", "bench", str(run), "--batch", str(batch)]
    cmd += ["--prompt-tokens", str(prompt), "--new-tokens", str(new), "--device", args.device]
    cmd += ["--json", "--out", str(out)] + (
        ["--threads", str(args.threads)] if args.threads else []
    )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit("chatsmith bench failed:\n" + proc.stderr)
    return json.loads(proc.stdout)


def bench_prediction(bench: dict, level: dict) -> dict | None:
    """What `chatsmith bench` predicts for this level: the measured point at the same batch,
    for queries of the shape this level actually sent."""
    from chatsmith.evaluation.cost import Point, served_tokens_per_s

    point = next((p for p in bench["points"] if p["batch"] == level["clients"]), None)
    if point is None or not level["completed"]:
        return None
    measured = Point(point["batch"], point["prefill_tokens_per_s"], point["decode_tokens_per_s"])
    predicted = served_tokens_per_s(
        measured, level["mean_prompt_tokens"], level["mean_tokens_per_request"]
    )
    return {
        "predicted_tokens_per_s": round(predicted, 1),
        "ratio": round(level["tokens_per_s"] / predicted, 3),
        "within_15_percent": abs(level["tokens_per_s"] / predicted - 1) <= 0.15,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run folder to serve (default: build one)")
    ap.add_argument("--depth", type=int, default=8, help="model depth when building one")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument(
        "--levels", type=int, nargs="+", help="concurrent clients (default 1 4 16 64, or --bench's)"
    )
    ap.add_argument("--bench", type=Path, help="a `chatsmith bench` JSON to compare against")
    ap.add_argument(
        "--bench-live",
        action="store_true",
        help="run `chatsmith bench` at each level's batch size right before the level "
        "(on a shared machine the load drifts between a bench run earlier and the test)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs of each level (and its bench)")
    ap.add_argument(
        "--build-only", action="store_true", help="build the model at --run (if absent) and stop"
    )
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=4)
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="server's torch threads (0: PyTorch's default, one per core)",
    )
    ap.add_argument(
        "--client",
        choices=["raw", "openai"],
        default="raw",
        help="load generator: raw sockets (cheapest) or the `openai` package's async client",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    bench = json.loads(args.bench.read_text()) if args.bench else None
    if args.levels is None and args.bench_live:
        args.levels = [1, 4, 16]
    if args.levels is None:
        args.levels = [p["batch"] for p in bench["points"]] if bench else [1, 4, 16, 64]

    tmp = tempfile.TemporaryDirectory(prefix="chatsmith-serve-bench-")
    run = args.run
    if run is not None and not run.exists():  # kept, so that `chatsmith bench` can use it too
        build_run(run, args.depth, args.seq_len)
    if args.build_only:
        return
    if run is None:
        run = Path(tmp.name) / "run"
        build_run(run, args.depth, args.seq_len)
    port = free_port()
    top = max(args.levels)
    cmd = [
        sys.executable,
        "-m",
        "chatsmith.cli",
        "serve",
        str(run),
        "--port",
        str(port),
        "--max-batch",
        str(top),
        "--max-queue",
        str(4 * top),
        "--device",
        args.device,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    server = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(base + "/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("server did not start:\n" + server.stderr.read()) from None
                time.sleep(0.5)
        model = httpx.get(base + "/v1/models").json()["data"][0]
        print(
            f"serving {model['id']} (context {model['context_length']}), slots {health['slots']}",
            file=sys.stderr,
            flush=True,
        )
        warm = asyncio.run(run_level("127.0.0.1", port, 2, 2, 8))
        prompt_tokens = round(warm["mean_prompt_tokens"])
        levels = []
        for c in [c for c in args.levels for _ in range(args.repeats)]:
            if args.bench_live:
                out = Path(tmp.name) / f"bench-{c}.png"
                bench = run_bench(run, c, prompt_tokens, args.max_tokens, args, out)
            n = max(args.min_requests, c * args.requests_per_client)
            before = httpx.get(base + "/health").json()
            cpu0 = cpu_seconds(server.pid)
            res = asyncio.run(
                run_level("127.0.0.1", port, c, n, args.max_tokens, args.temperature, args.client)
            )
            cpu = cpu_seconds(server.pid) - cpu0
            after = httpx.get(base + "/health").json()
            steps = after["steps"] - before["steps"]
            tokens = max(after["tokens"] - before["tokens"], 1)
            decode = after["step_seconds"] - before["step_seconds"]
            prefill = after["prefill_seconds"] - before["prefill_seconds"]
            res["server"] = {
                "mean_batch": round((after["tokens"] - before["tokens"]) / max(steps, 1), 1),
                "decode_ms_per_step": round(1000 * decode / max(steps, 1), 2),
                "prefill_s": round(prefill, 2),
                "decode_s": round(decode, 2),
                "cpu_s": round(cpu, 2),
            }
            if "engine_cpu_seconds" in after:
                # the server's CPU time per generated token outside the engine thread: HTTP,
                # SSE chunks, detokenising, the event loop's side of the hand-off
                engine_cpu = after["engine_cpu_seconds"] - before["engine_cpu_seconds"]
                res["server"]["engine_cpu_s"] = round(engine_cpu, 2)
                res["server"]["overhead_us_per_token"] = round(1e6 * (cpu - engine_cpu) / tokens, 1)
            else:  # older servers: subtract the engine's wall time instead (waits included)
                res["server"]["overhead_us_per_token"] = round(
                    1e6 * (cpu - decode - prefill) / tokens, 1
                )
            if bench is not None:
                res["bench"] = bench_prediction(bench, res)
            levels.append(res)
            print(json.dumps(res), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    one = next((r for r in levels if r["clients"] == 1), None)
    print(
        "\n| clients | requests | lost | tokens/s | x one client | TTFT p50/p90/p99 ms "
        "| per-token p50/p90/p99 ms | server overhead µs/token |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in levels:
        speedup = f"{r['tokens_per_s'] / one['tokens_per_s']:.1f}x" if one else "-"
        t, g = r["ttft_ms"], r["token_ms"]
        print(
            f"| {r['clients']} | {r['requests']} | {r['lost']} | {r['tokens_per_s']} | "
            f"{speedup} | {t['p50']}/{t['p90']}/{t['p99']} | {g['p50']}/{g['p90']}/{g['p99']} "
            f"| {r['server']['overhead_us_per_token']} |"
        )
    if bench is not None:
        print("\n| clients | served tokens/s | bench predicts | ratio | within 15% |")
        print("|---|---|---|---|---|")
        for r in levels:
            b = r.get("bench")
            if b:
                print(
                    f"| {r['clients']} | {r['tokens_per_s']} | {b['predicted_tokens_per_s']} | "
                    f"{b['ratio']} | {'yes' if b['within_15_percent'] else 'no'} |"
                )
        if args.repeats > 1:
            print("\n| clients | median served | median predicted | median ratio |")
            print("|---|---|---|---|")
            for c in args.levels:
                rs = [r for r in levels if r["clients"] == c and r.get("bench")]
                if rs:
                    med = [
                        statistics.median(f(r) for r in rs)
                        for f in (
                            lambda r: r["tokens_per_s"],
                            lambda r: r["bench"]["predicted_tokens_per_s"],
                            lambda r: r["bench"]["ratio"],
                        )
                    ]
                    print(f"| {c} | {med[0]:.1f} | {med[1]:.1f} | {med[2]:.3f} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "levels": levels}, indent=2
            )
        )


if __name__ == "__main__":
    main()

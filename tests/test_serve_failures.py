"""Failures inside the model or the engine thread: only the requests at fault fail, promptly;
slots come back; a dead or stuck engine shows in /health and turns requests away with 503."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import httpx
import pytest
import torch
from conftest import wait_for

from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer

POISON = "\u2603"  # a snowman: its last byte's token never occurs in the ASCII test prompts


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


class FaultyModel:
    """Wraps the engine's model: the forward pass raises (as an out-of-memory error would) for
    any batch holding a prompt with the poison token, at prefill or at a later decode step."""

    def __init__(self, model, poison_id: int, at: str):
        self.model, self.poison_id, self.at = model, poison_id, at
        self.poisoned_slots: set[int] = set()

    def __call__(self, x: torch.Tensor, cache=None, rows=None, **kw):
        if x.shape[1] > 1:  # prefill: (B, S) prompts
            bad = (x == self.poison_id).any(-1)
            if self.at == "prefill" and bad.any():
                raise RuntimeError("out of memory (simulated)")
            for row, is_bad in zip(rows.tolist(), bad.tolist()):
                (self.poisoned_slots.add if is_bad else self.poisoned_slots.discard)(row)
        elif self.poisoned_slots & set(rows.tolist()):
            raise RuntimeError("out of memory while decoding (simulated)")
        return self.model(x, cache=cache, rows=rows, **kw)


def faulty_app(loaded, at: str, **limits):
    app = create_app(loaded, ServeLimits(max_batch=4, max_queue=8, **limits))
    engine = app.state.server.engine
    engine.model = FaultyModel(engine.model, loaded.tokenizer.encode(POISON)[-1], at)
    step = engine.step

    def slow_step(*only):  # healthy streams stay in flight while the poisoned one runs
        time.sleep(0.01)
        return step(*only)

    engine.step = slow_step
    return app


def stream(url: str, prompt: str, max_tokens: int) -> list[dict]:
    """The events of one streamed completion (temperature 0, no stop token can end it early)."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "temperature": 0}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def health(url: str) -> httpx.Response:
    return httpx.get(url + "/health", timeout=10)


@pytest.mark.parametrize("at", ["prefill", "decode"])
def test_a_failing_forward_pass_fails_only_its_request(loaded, at, caplog):
    caplog.set_level(logging.ERROR, logger="chatsmith.serve")
    app = faulty_app(loaded, at)
    with LiveServer(app) as srv:
        healthy: list = []
        t = threading.Thread(target=lambda: healthy.append(stream(srv.url, "Hello there", 40)))
        t.start()
        assert wait_for(lambda: health(srv.url).json()["running"] == 1)
        t0 = time.monotonic()
        bad = httpx.post(
            srv.url + "/v1/completions",
            json={"prompt": "Hi " + POISON, "max_tokens": 30, "temperature": 0},
            timeout=30,
        )
        took = time.monotonic() - t0
        assert bad.status_code == 500, bad.text
        assert bad.json()["error"]["type"] == "server_error"
        assert "RuntimeError" in bad.json()["error"]["message"]
        assert took < 5  # prompt, not after a timeout
        # the same through a stream: an error event, then the end of the stream
        events = stream(srv.url, "Yo " + POISON, 30)
        assert events[-1]["error"]["type"] == "server_error"
        t.join(30)
        # the unrelated stream went on to its end
        finishes = [c["choices"][0]["finish_reason"] for c in healthy[0] if c.get("choices")]
        assert finishes[-1] == "length" and "error" not in healthy[0][-1]
        # every slot is free again, and the server still serves
        assert wait_for(lambda: health(srv.url).json()["slots_free"] == 4)
        h = health(srv.url)
        assert h.status_code == 200 and h.json()["running"] == h.json()["waiting"] == 0
        ok = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3})
        assert ok.status_code == 200
    failures = [r for r in caplog.records if r.name == "chatsmith.serve"]
    assert len(failures) == 2, [r.getMessage() for r in failures]  # once per failed request
    assert all(r.exc_info and "simulated" in str(r.exc_info[1]) for r in failures)


class EngineKilled(BaseException):
    """Not an Exception: escapes the engine loop's handlers, as a fatal error would."""


def test_a_dead_engine_thread_shows_in_health_and_gives_503(loaded, caplog):
    caplog.set_level(logging.ERROR, logger="chatsmith.serve")
    app = create_app(loaded, ServeLimits(max_batch=2))
    engine = app.state.server.engine
    gate = threading.Event()

    def dying_step(*only):
        gate.wait(10)
        raise EngineKilled("simulated fatal error")

    engine.step = dying_step
    with LiveServer(app) as srv:
        assert health(srv.url).status_code == 200
        result = []
        t = threading.Thread(
            target=lambda: result.append(
                httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi"}, timeout=30)
            )
        )
        t.start()
        assert wait_for(lambda: health(srv.url).json()["running"] == 1)
        gate.set()
        t.join(30)
        assert result[0].status_code == 503  # the request in flight is answered
        h = health(srv.url)
        assert h.status_code == 503 and "stopped" in h.json()["reason"]
        t0 = time.monotonic()
        late = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi"}, timeout=30)
        assert late.status_code == 503 and time.monotonic() - t0 < 5
        assert late.json()["error"]["code"] == "engine_unavailable"
        assert late.headers["retry-after"] == "1"
    died = [r for r in caplog.records if "died" in r.getMessage()]
    assert len(died) == 1 and isinstance(died[0].exc_info[1], EngineKilled)


def test_a_stuck_engine_shows_in_health_and_gives_503(loaded):
    app = create_app(loaded, ServeLimits(max_batch=2, engine_stall_s=0.5))
    engine = app.state.server.engine
    step, gate = engine.step, threading.Event()
    engine.step = lambda *only: (gate.wait(30), step(*only))[1]
    with LiveServer(app) as srv:
        t0 = time.monotonic()
        stuck = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi"}, timeout=30)
        assert stuck.status_code == 503 and time.monotonic() - t0 < 10
        h = health(srv.url)
        assert h.status_code == 503 and "stuck" in h.json()["reason"]
        assert httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi"}).status_code == 503
        gate.set()  # the step ends: the engine is healthy again
        assert wait_for(lambda: health(srv.url).status_code == 200)
        ok = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200


def thread_cpu_ticks(thread: threading.Thread) -> int:
    """User + system CPU time a thread has used, in clock ticks (Linux /proc)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads Linux /proc")
def test_after_a_failure_the_only_slot_serves_again_and_the_engine_rests(loaded):
    """With one slot, a prefill failure that kept the slot would leave the next request
    waiting forever and the engine thread spinning over a queue it can never admit."""
    app = create_app(loaded, ServeLimits(max_batch=1))
    engine = app.state.server.engine
    engine.model = FaultyModel(engine.model, loaded.tokenizer.encode(POISON)[-1], "prefill")
    with LiveServer(app) as srv:
        bad = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi " + POISON})
        assert bad.status_code == 500
        ok = httpx.post(
            srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30
        )
        assert ok.status_code == 200
        thread = app.state.server.scheduler._thread
        before = thread_cpu_ticks(thread)
        time.sleep(1.0)
        assert thread_cpu_ticks(thread) - before <= 2  # waiting, not spinning

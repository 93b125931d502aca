"""Clients that cost more than they should: huge prompts (refused before tokenizing, and
tokenized off the event loop), slow or idle connections (timeouts, a connection limit), and
clients that leave while queued (their entries leave the queue)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from conftest import wait_for

from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


def recording_encode(app) -> list[bool]:
    """Record, for each tokenizer call, whether it ran on a thread with an event loop."""
    tok = app.state.server.tok
    encode, on_loop = tok.encode, []

    def spy(text):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return encode(text)

    tok.encode = spy
    return on_loop


def test_a_huge_prompt_is_refused_before_it_is_tokenized(loaded):
    app = create_app(loaded)
    calls = recording_encode(app)
    huge = "word " * 150_000  # 750 KB: under the body limit, far over any context
    with LiveServer(app) as srv:
        for path, body in [
            ("/v1/completions", {"prompt": huge}),
            ("/v1/completions", {"prompt": ["hi", huge]}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": huge}]}),
        ]:
            resp = httpx.post(srv.url + path, json=body, timeout=30)
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["code"] == "context_length_exceeded"
        assert calls == []  # refused on its length alone
        # a prompt under that bound but over the context is still measured in tokens
        srv_ = app.state.server
        near = "x " * (srv_.max_prompt_chars // 2 - 10)
        resp = httpx.post(srv.url + "/v1/completions", json={"prompt": near}, timeout=30)
        assert resp.status_code == 400 and calls


def test_prompts_are_tokenized_off_the_event_loop(loaded):
    app = create_app(loaded)
    on_loop = recording_encode(app)
    with LiveServer(app) as srv:
        chat = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}
        assert httpx.post(srv.url + "/v1/chat/completions", json=chat).status_code == 200
        text = {"prompt": ["Hello", "there"], "max_tokens": 2}
        assert httpx.post(srv.url + "/v1/completions", json=text).status_code == 200
    assert len(on_loop) >= 3 and not any(on_loop)


# ---- slow and idle connections ------------------------------------------------------------


def raw(srv) -> socket.socket:
    return socket.create_connection((srv.host, srv.port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it sent first."""
    sock.settimeout(seconds)
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, got
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def test_half_sent_headers_and_bodies_time_out(loaded):
    limits = ServeLimits(header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_s=0.5)
    with LiveServer(create_app(loaded, limits)) as srv:
        idle = raw(srv)  # connects, sends nothing
        half_header = raw(srv)
        half_header.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle = raw(srv)  # a byte at a time does not push the deadline back
        sent, started = 0, time.monotonic()
        try:
            for byte in b"GET /health HTTP/1.1\r\nX-Slow: " + b"x" * 200:
                trickle.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 200 and time.monotonic() - started < 4  # cut off mid-header
        half_body = raw(srv)
        half_body.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt":'
        )
        for sock in (idle, half_header):
            assert closed_within(sock, 5)[0]
        closed, answer = closed_within(half_body, 5)
        assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"body_timeout" in answer
        # a prompt client is unaffected
        ok = httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200


def test_connections_beyond_the_limit_are_turned_away(loaded):
    with LiveServer(create_app(loaded, ServeLimits(max_connections=4))) as srv:
        held = [raw(srv) for _ in range(4)]
        time.sleep(0.2)
        assert httpx.get(srv.url + "/health").status_code == 503
        for sock in held:
            sock.close()
        assert wait_for(lambda: httpx.get(srv.url + "/health").status_code == 200)


# ---- clients that leave while queued ----------------------------------------------------------


def test_clients_that_leave_while_queued_leave_the_queue(loaded):
    """With the only slot busy (the engine held mid-step), clients queue, then hang up: the
    queue empties at once, not when the engine gets round to it."""
    app = create_app(loaded, ServeLimits(max_batch=1, max_queue=64))
    engine = app.state.server.engine
    step, gate = engine.step, threading.Event()
    engine.step = lambda *only: (gate.wait(30), step(*only))[1]
    with LiveServer(app) as srv:

        def stats() -> dict:
            return httpx.get(srv.url + "/health").json()

        busy = threading.Thread(
            target=httpx.post,
            args=(srv.url + "/v1/completions",),
            kwargs={"json": {"prompt": "Hi", "max_tokens": 2}, "timeout": 60},
        )
        busy.start()
        assert wait_for(lambda: stats()["running"] == 1)
        socks = []
        for i in range(30):
            body = json.dumps({"prompt": f"client {i}", "stream": i % 2 == 0}).encode()
            sock = raw(srv)
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            socks.append(sock)
        assert wait_for(lambda: stats()["waiting"] == 30)
        for sock in socks:
            sock.close()
        assert wait_for(lambda: stats()["waiting"] == 0, 10), stats()
        assert stats()["running"] == 1  # the engine is still held: the queue emptied itself
        gate.set()
        busy.join(60)
        assert wait_for(lambda: stats()["running"] == 0 and stats()["slots_free"] == 1)

"""The OpenAI-compatible API against a live uvicorn server, through the real `openai` client."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import httpx
import openai
import pytest
from conftest import wait_for

from chatsmith.chat_template import parse, render_prompt
from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer
from chatsmith.serving.server import ChoiceText

KEY = "test-key"
HELLO = [{"role": "user", "content": "Hi, how are you?"}]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


@pytest.fixture(scope="module")
def live(loaded):
    app = create_app(
        loaded, ServeLimits(max_batch=4, max_queue=8, max_body_bytes=100_000), api_key=KEY
    )
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def post(live, path: str, body, key: str | None = KEY, **kw) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    return httpx.post(live.url + path, content=body, headers=headers, timeout=30, **kw)


def slow_engine(app, delay: float) -> list:
    """Make each decode step take `delay` seconds; return the list the engine's sequences go to."""
    engine = app.state.server.engine
    step, add, seen = engine.step, engine.add, []

    def slow_step():
        time.sleep(delay)
        return step()

    def recording_add(prompt, params):
        seq = add(prompt, params)
        seen.append(seq)
        return seq

    engine.step, engine.add = slow_step, recording_add
    return seen


# ---- endpoints through the openai client ----------------------------------------------------


def test_models_and_health(client, live, loaded):
    models = client.models.list()
    assert [m.id for m in models.data] == [loaded.name]
    assert client.models.retrieve(loaded.name).id == loaded.name
    health = httpx.get(live.url + "/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert health["status"] == "ok" and health["slots"] == 4
    # without the key: liveness only, no model name nor traffic figures
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}
    assert "/v1/chat/completions" in httpx.get(live.url + "/openapi.json").json()["paths"]


def test_models_created_is_when_the_run_was_made(tiny_run, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(tiny_run, run)
    made = 1_600_000_000  # September 2020: long before any request
    os.utime(run / "run.json", (made, made))
    with LiveServer(create_app(load_run(run, "cpu"))) as srv:
        listed = httpx.get(srv.url + "/v1/models").json()["data"]
        one = httpx.get(srv.url + "/v1/models/old-run").json()
    assert [m["created"] for m in listed] == [made] and one["created"] == made


def test_chat_completion(client, loaded):
    r = client.chat.completions.create(model="any", messages=HELLO, max_tokens=12, seed=3)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == loaded.name
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert "<|" not in choice.message.content
    prompt = render_prompt(loaded.tokenizer, HELLO)
    assert r.usage.prompt_tokens == len(prompt)
    assert 0 < r.usage.completion_tokens <= 12 or choice.finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=HELLO,
            max_tokens=10,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="m", messages=HELLO, max_tokens=10, seed=5)
    assert text == whole.choices[0].message.content  # streamed and not: the same reply


def test_completions_stream_and_not(client):
    r = client.completions.create(model="m", prompt="Hello there", max_tokens=8, n=2, seed=1)
    assert r.object == "text_completion" and [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens > 0
    pieces = list(
        client.completions.create(
            model="m", prompt="Hello there", max_tokens=8, seed=1, stream=True
        )
    )
    streamed = "".join(p.choices[0].text for p in pieces if p.choices)
    assert streamed == r.choices[0].text  # choice 0 uses the request's seed either way


def test_seed_reproducible(client):
    def ask(seed):
        return (
            client.chat.completions.create(
                model="m", messages=HELLO, max_tokens=16, temperature=1.0, seed=seed
            )
            .choices[0]
            .message.content
        )

    first = ask(11)
    assert ask(11) == first
    assert len({first, ask(12), ask(13), ask(14)}) > 1  # the seed matters


def test_stop_strings(client):
    def greedy(stop=None, stream=False):
        kw = dict(model="m", prompt="Hi, how are", max_tokens=24, temperature=0, stop=stop)
        if not stream:
            r = client.completions.create(**kw)
            return r.choices[0].text, r.choices[0].finish_reason
        parts = list(client.completions.create(stream=True, **kw))
        return "".join(p.choices[0].text for p in parts), parts[-1].choices[0].finish_reason

    full, _ = greedy()
    assert len(full) > 6
    stop = full[4:6]
    expect = full[: full.find(stop)]
    assert greedy(stop) == (expect, "stop")
    assert greedy([stop, "\x00never"], stream=True) == (expect, "stop")


def test_choice_text_holds_back_partial_stop():
    class Tok:  # one character per token
        def token_bytes(self, t):
            return chr(t).encode()

    st = ChoiceText(Tok(), ["END"])
    out = [st.push(ord(c)) for c in "abEN"]
    assert "".join(out) == "ab"  # "EN" might start "END"
    assert st.push(ord("x")) == "ENx"
    st.push(ord("E")), st.push(ord("N"))
    assert st.push(ord("D")) == "" and st.finish == "stop" and st.text == "abENx"


def test_n_choices_and_markers_never_shown(client):
    r = client.chat.completions.create(
        model="m",
        n=3,
        max_tokens=20,
        temperature=1.2,
        seed=9,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "say <|end|><|assistant|> please"},
        ],
    )
    assert len(r.choices) == 3
    for c in r.choices:
        assert not any(m in c.message.content for m in ("<|end|>", "<|user|>", "<|assistant|>"))


# ---- SSE framing ------------------------------------------------------------------------------


def test_sse_framing(live):
    body = {
        "messages": HELLO,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST",
        live.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    assert payloads[-1]["usage"]["total_tokens"] > 0
    assert all(p["usage"] is None for p in payloads[:-1])


# ---- errors -----------------------------------------------------------------------------------


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 10**6}, "max_tokens"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
        ({"messages": HELLO, "top_p": 1.5}, "top_p"),
        ({"messages": HELLO, "n": 50}, "n"),
        ({"messages": HELLO, "stop": ["a", ""]}, "stop"),
        ({"messages": HELLO, "seed": "x"}, "seed"),
        ({"messages": HELLO, "stream": "maybe"}, "stream"),
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
            "messages",
        ),
    ],
)
def test_bad_fields_are_400_naming_the_field(live, body, param):
    err = error_of(post(live, "/v1/chat/completions", body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", ["{not json", "[1, 2]", "42", "", "null"])
def test_bad_json_is_400(live, body):
    err = error_of(post(live, "/v1/completions", body), 400)
    assert err["code"] in ("invalid_json", "invalid_body")


def test_prompt_longer_than_context_is_400(client, live):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello " * 200}]
        )
    assert e.value.code == "context_length_exceeded"
    err = error_of(post(live, "/v1/completions", {"prompt": ["ok", "word " * 200]}), 400)
    assert err["param"] == "prompt[1]"


def test_api_key(live):
    c = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.chat.completions.create(model="m", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    for key in (None, "wrong"):  # no Authorization header at all, a wrong key
        err = error_of(post(live, "/v1/chat/completions", {"messages": HELLO}, key=key), 401)
        assert err["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/v1/models").status_code == 401
    assert error_of(post(live, "/v1/models", {}, key=None), 405)  # wrong method, still JSON
    assert httpx.get(live.url + "/health").status_code == 200  # health needs no key
    assert httpx.get(live.url + "/").status_code == 200  # nor the chat page


def test_body_too_large_is_413(live):
    err = error_of(
        post(
            live, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 200_000}]}
        ),
        413,
    )
    assert err["code"] == "body_too_large"
    # without Content-Length (chunked upload) the limit holds too
    big = json.dumps({"prompt": "x" * 200_000}).encode()
    chunks = (big[k : k + 8192] for k in range(0, len(big), 8192))
    resp = httpx.post(
        live.url + "/v1/completions",
        content=chunks,
        timeout=30,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert error_of(resp, 413)["code"] == "body_too_large"


def test_unknown_route_and_model_are_404_json(live):
    error_of(httpx.get(live.url + "/v1/nothing"), 404)
    err = error_of(
        httpx.get(live.url + "/v1/models/other", headers={"Authorization": f"Bearer {KEY}"}), 404
    )
    assert err["code"] == "model_not_found"


# ---- load behaviour: a full queue, a client that leaves ---------------------------------------


def test_queue_full_is_429_with_retry_after(loaded):
    app = create_app(loaded, ServeLimits(max_batch=1, max_queue=1))
    gate = threading.Event()
    engine = app.state.server.engine
    step = engine.step
    engine.step = lambda: (gate.wait(10), step())[1]
    body = {"prompt": "hi", "max_tokens": 3}
    with LiveServer(app) as srv:
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(post(srv, "/v1/completions", body)))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        assert wait_for(
            lambda: (
                httpx.get(srv.url + "/health").json()["waiting"]
                + httpx.get(srv.url + "/health").json()["running"]
                == 2
            ),
            5.0,
        )
        busy = post(srv, "/v1/completions", body)
        err = error_of(busy, 429)
        assert busy.headers["retry-after"] == "1" and err["code"] == "queue_full"
        gate.set()
        for t in threads:
            t.join(30)
        assert [r.status_code for r in results] == [200, 200]  # the queued one was served


def test_disconnect_mid_stream_frees_the_slot(loaded):
    app = create_app(loaded, ServeLimits(max_batch=1, max_queue=0))
    seen = slow_engine(app, 0.03)
    with LiveServer(app) as srv:
        body = {"prompt": "Hello", "max_tokens": 60, "stream": True, "temperature": 0}
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
        # the client is gone: its slot must come free long before 60 steps (1.8 s) are done
        assert wait_for(lambda: httpx.get(srv.url + "/health").json()["running"] == 0, 1.0)
        assert seen[0].finish_reason == "cancelled" and len(seen[0].tokens) < 40
        assert app.state.server.engine.has_free_slot()
        ok = post(srv, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert ok.status_code == 200


def test_concurrent_requests_share_decode_steps(loaded):
    app = create_app(loaded, ServeLimits(max_batch=8))
    slow_engine(app, 0.01)
    batch_sizes = []
    engine = app.state.server.engine
    step = engine.step

    def counting_step():
        batch_sizes.append(len(engine.live))
        return step()

    engine.step = counting_step
    with LiveServer(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        threads = [
            threading.Thread(
                target=c.completions.create,
                kwargs=dict(model="m", prompt="Hello", max_tokens=20, temperature=0),
            )
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert max(batch_sizes) >= 4  # requests joined one batched step


def test_multi_turn_prompt_uses_the_chat_template(loaded, client):
    msgs = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    r = client.chat.completions.create(model="m", messages=msgs, max_tokens=2)
    tok = loaded.tokenizer
    ids = render_prompt(tok, msgs)
    assert r.usage.prompt_tokens == len(ids)
    assert parse(tok, ids) == msgs


# ---- the command line -------------------------------------------------------------------------


def test_serve_command_errors_are_one_line(tiny_run, tmp_path):
    from conftest import run_cli

    r = run_cli("serve", str(tmp_path / "missing"), timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    r = run_cli("serve", str(tiny_run), "--max-batch", "0", timeout=120)
    assert r.returncode == 1 and "max-batch must be at least 1" in r.stderr


@pytest.mark.slow
def test_serve_command_serves(tiny_run):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatsmith.cli",
            "serve",
            str(tiny_run),
            "--port",
            str(port),
            "--api-key",
            "k2",
            "--max-batch",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 60), proc.stderr.read() if proc.poll() is not None else "no answer"
        c = openai.OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0)
        r = c.chat.completions.create(model="m", messages=HELLO, max_tokens=3)
        assert r.usage.total_tokens > 0
        health = httpx.get(url + "/health", headers={"Authorization": "Bearer k2"})
        assert health.json()["slots"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)

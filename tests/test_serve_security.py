"""Who gets in: API keys (empty, non-ASCII), /health with a key, JSON-only bodies and allowed
Host names against pages on other sites, and the start-up warning for an open address."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from chatsmith.errors import ChatsmithError
from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.live import LiveServer
from chatsmith.serving.middleware import LOOPBACK_HOSTS, allowed_hosts_for

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


@pytest.fixture(scope="module")
def open_server(loaded):
    """No key, the default Host names (loopback)."""
    with LiveServer(create_app(loaded)) as srv:
        yield srv


def chat(url: str, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", timeout=30, **kw)


# ---- content types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_api_calls_must_be_json(open_server, content_type):
    """The content types a cross-site page may POST without a CORS preflight are refused."""
    import json

    headers = {} if content_type is None else {"Content-Type": content_type}
    resp = chat(open_server.url, content=json.dumps(CHAT), headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json()["error"]["code"] == "unsupported_media_type"


def test_every_post_route_refuses_non_json(open_server):
    paths = httpx.get(open_server.url + "/openapi.json").json()["paths"]
    posts = [p for p, ops in paths.items() if "post" in ops]
    assert "/v1/completions" in posts
    for path in posts:
        resp = httpx.post(
            open_server.url + path, content=b"{}", headers={"Content-Type": "text/plain"}
        )
        assert resp.status_code == 415, path


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_content_types_are_served(open_server, content_type):
    import json

    resp = chat(open_server.url, content=json.dumps(CHAT), headers={"Content-Type": content_type})
    assert resp.status_code == 200, resp.text


# ---- Host names -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/"])
def test_other_host_names_are_refused_by_default(open_server, path):
    """A DNS-rebinding page reaches this server under its own name: nothing is answered."""
    resp = httpx.get(open_server.url + path, headers={"Host": "attacker.example:8000"})
    assert resp.status_code == 421
    assert resp.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert httpx.get(open_server.url + path, headers={"Host": host}).status_code == 200, host


def test_allowed_host_adds_a_name(loaded):
    app = create_app(loaded, allowed_hosts=allowed_hosts_for("127.0.0.1", ["box.lan"]))
    with LiveServer(app) as srv:
        assert httpx.get(srv.url + "/health", headers={"Host": "box.lan:80"}).status_code == 200
        assert httpx.get(srv.url + "/health", headers={"Host": "other.lan"}).status_code == 421


def test_allowed_hosts_follow_the_bind_address():
    assert allowed_hosts_for("127.0.0.1") == LOOPBACK_HOSTS
    assert allowed_hosts_for("::1") == LOOPBACK_HOSTS
    assert allowed_hosts_for("localhost", ["a"]) == (*LOOPBACK_HOSTS, "a")
    assert allowed_hosts_for("0.0.0.0") is None  # bound for the network: its names are unknown
    assert allowed_hosts_for("0.0.0.0", ["box.lan"]) == (*LOOPBACK_HOSTS, "box.lan")


# ---- keys -----------------------------------------------------------------------------------


def test_a_non_ascii_key_works_from_utf8_clients(loaded):
    key = "clé-ключ-鍵"
    with LiveServer(create_app(loaded, api_key=key)) as srv:

        def call(value: bytes) -> int:
            headers = {"Authorization": value, "Content-Type": "application/json"}
            return httpx.get(srv.url + "/v1/models", headers=headers).status_code

        assert call(b"Bearer " + key.encode("utf-8")) == 200
        assert call(b"Bearer " + key.encode("latin-1", "replace")) == 401
        assert call(b"Bearer") == 401


def test_health_with_a_key_is_liveness_only(loaded):
    with LiveServer(create_app(loaded, api_key="k")) as srv:
        anonymous = httpx.get(srv.url + "/health")
        assert anonymous.status_code == 200 and anonymous.json() == {"status": "ok"}
        full = httpx.get(srv.url + "/health", headers={"Authorization": "Bearer k"}).json()
        assert full["status"] == "ok" and {"running", "waiting", "tokens"} <= set(full)


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_is_refused(loaded, key):
    with pytest.raises(ChatsmithError, match="empty"):
        create_app(loaded, api_key=key)


def test_serve_refuses_an_empty_key_at_start_up(tiny_run):
    from conftest import run_cli

    r = run_cli("serve", str(tiny_run), "--api-key", "", timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "empty" in r.stderr
    assert r.stderr.count("\n") == 1  # one line, no traceback
    env = {**os.environ, "CHATSMITH_API_KEY": ""}
    r = run_cli("serve", str(tiny_run), timeout=120, env=env)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "empty" in r.stderr


def test_serve_warns_when_open_to_the_network_without_a_key(tiny_run):
    env = {k: v for k, v in os.environ.items() if k != "CHATSMITH_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatsmith.cli", "serve", str(tiny_run), "--host", "0.0.0.0"]
        + ["--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving "):
                break
        warnings = [line for line in lines if line.startswith("warning:")]
        assert len(warnings) == 1 and "without an API key" in warnings[0], lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)

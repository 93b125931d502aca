"""Fuzz the API from its own OpenAPI schema: no input may cause a 5xx (schemathesis), and no
text field accepts a lone UTF-16 surrogate (a generator over every string in the schema)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

EXAMPLES = 25  # per operation and mode: a bounded run (about 250 requests)


@pytest.fixture(scope="module")
def fuzz_server(tiny_run):
    # small limits keep each generated request cheap; the key exercises the auth path too
    app = create_app(
        load_run(tiny_run, "cpu"),
        ServeLimits(max_tokens=8, max_n=2, max_body_bytes=20_000),
        api_key="k",
    )
    with LiveServer(app) as srv:
        yield srv


@pytest.mark.slow
def test_no_server_errors_from_schema_fuzzing(fuzz_server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    failures, seen = [], {}

    def fuzz(op, mode, headers: dict, examples: int) -> None:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            resp = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)
            seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
            if resp.status_code >= 500:
                failures.append((op.method, op.path, case.body, resp.text[:300]))

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (an operation without inputs)
            pass

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(op, mode, {"Authorization": "Bearer k"}, EXAMPLES)
            fuzz(op, mode, {}, 3)  # without the key: 401, never 5xx
    assert not failures, failures[:5]
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen  # both kinds were exercised


# ---- every text field of every route, with a lone UTF-16 surrogate ------------------------------

SURROGATE = "hi \ud800"  # JSON can carry it ("\\ud800"); no UTF-8 text can
AUTH = {"Authorization": "Bearer k", "Content-Type": "application/json"}


def _deref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def string_sites(schema: dict, root: dict, path: tuple = ()) -> set[tuple]:
    """Every place a string can sit in a body of this schema: property names, "[]" for items."""
    schema = _deref(schema, root)
    sites: set[tuple] = set()
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", []):
        sites |= string_sites(branch, root, path)
    if schema.get("type") == "string" or "enum" in schema or "const" in schema:
        sites.add(path)
    for name, sub in schema.get("properties", {}).items():
        sites |= string_sites(sub, root, (*path, name))
    if "items" in schema:
        sites |= string_sites(schema["items"], root, (*path, "[]"))
    return sites


def instance(schema: dict, root: dict, target: tuple | None, leaf: str | None):
    """The smallest body the schema accepts that has a string at `target` (None: off the path
    to it), with `leaf` there (None: a valid value). A conversation needs a user turn: enums
    prefer "user"."""
    schema = _deref(schema, root)
    branches = schema.get("anyOf", []) + schema.get("oneOf", []) + schema.get("allOf", [])
    if branches:
        usable = [b for b in branches if _deref(b, root).get("type") != "null"]
        if target is not None:
            usable = [b for b in usable if target in string_sites(b, root)]
        return instance(usable[0], root, target, leaf)
    if target == () and leaf is not None:
        return leaf
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return "user" if "user" in values else values[0]
    kind = schema.get("type")
    if kind == "object":
        names = set(schema.get("required", [])) | ({target[0]} if target else set())
        props = schema.get("properties", {})
        return {
            n: instance(props[n], root, target[1:] if target and target[0] == n else None, leaf)
            for n in sorted(names)
        }
    if kind == "array":
        sub = target[1:] if target and target[0] == "[]" else None
        return [instance(schema["items"], root, sub, leaf)]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return "hi"


def _answer(url: str, body: dict) -> httpx.Response:
    # json.dumps escapes the surrogate as \\ud800; encoding it as UTF-8 text would fail
    return httpx.post(url, content=json.dumps(body), headers=AUTH, timeout=30)


def test_a_lone_surrogate_in_any_text_field_is_400_naming_it(fuzz_server):
    """For each route with a JSON body, each place its schema allows a string, streamed and not:
    the same body with plain text is served, and with a lone surrogate is a 400 naming the
    field (or served: encoded safely), never a 5xx. New routes and fields are covered as soon
    as they are in the schema."""
    root = httpx.get(fuzz_server.url + "/openapi.json").json()
    checked, refused = [], []
    for path, ops in root["paths"].items():
        for method, op in ops.items():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json")
            if schema is None:
                continue
            body_schema = _deref(schema["schema"], root)
            streams = [False, True] if "stream" in body_schema.get("properties", {}) else [False]
            for site in sorted(string_sites(body_schema, root)):
                for stream in streams:
                    plain = instance(body_schema, root, site, None)
                    bad = instance(body_schema, root, site, SURROGATE)
                    if stream:
                        plain["stream"] = bad["stream"] = True
                    ok = _answer(fuzz_server.url + path, plain)
                    assert ok.status_code == 200, (path, site, plain, ok.text)
                    assert "[DONE]" in ok.text or not stream
                    resp = _answer(fuzz_server.url + path, bad)
                    where = (method, path, site, stream)
                    assert resp.status_code in (200, 400), (where, resp.status_code, resp.text)
                    if resp.status_code == 400:
                        err = resp.json()["error"]
                        assert (err["param"] or "").startswith(site[0]), (where, err)
                        refused.append(where)
                    else:
                        assert '"error"' not in resp.text, (where, resp.text)
                    checked.append(where)
    fields = {(w[1], w[2]) for w in checked}
    # the text users send is all in there, and all of it refused
    for must in [
        ("/v1/chat/completions", ("messages", "[]", "content")),
        ("/v1/chat/completions", ("messages", "[]", "content", "[]", "text")),
        ("/v1/chat/completions", ("stop",)),
        ("/v1/chat/completions", ("stop", "[]")),
        ("/v1/completions", ("prompt",)),
        ("/v1/completions", ("prompt", "[]")),
    ]:
        assert must in fields
        assert any((w[1], w[2]) == must for w in refused), must


def test_a_surrogate_in_a_path_parameter_is_not_a_server_error(fuzz_server):
    root = httpx.get(fuzz_server.url + "/openapi.json").json()
    templated = [p for p in root["paths"] if "{" in p]
    assert templated  # /v1/models/{model}
    for path in templated:
        url = fuzz_server.url + re.sub(r"\{[^}]+\}", "%ED%A0%80x", path)  # UTF-8 of \ud800
        resp = httpx.get(url, headers=AUTH, timeout=30)
        assert resp.status_code < 500, (path, resp.text)

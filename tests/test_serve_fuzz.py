"""Fuzz the API from its own OpenAPI schema (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

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

"""`GET /metrics` of a live server: Prometheus text whose counters match what was served."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatsmith.inference.loading import load_run
from chatsmith.serving.app import create_app
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.live import LiveServer


@pytest.fixture(scope="module")
def live(tiny_run, one_thread):
    app = create_app(load_run(tiny_run, "cpu"), ServeLimits(max_batch=3, max_queue=4), None)
    with LiveServer(app) as srv:
        yield srv


def scrape(live) -> dict[tuple[str, tuple], float]:
    r = httpx.get(live.url + "/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_count_what_was_served(live):
    before = scrape(live)
    assert before[("chatsmith_slots", ())] == 3
    body = {
        "messages": [{"role": "user", "content": "Hi, how are you?"}],
        "max_tokens": 6,
        "temperature": 1.0,
    }
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    replies = 0  # replies with at least one token (a reply may stop at once)
    for seed in range(3):
        r = httpx.post(live.url + "/v1/chat/completions", json={**body, "seed": seed}, timeout=60)
        assert r.status_code == 200
        for k in usage:
            usage[k] += r.json()["usage"][k]
        replies += r.json()["usage"]["completion_tokens"] > 0
    assert replies
    bad = httpx.post(live.url + "/v1/chat/completions", json={"messages": []}, timeout=30)
    assert bad.status_code == 400
    m = scrape(live)
    chat = "/v1/chat/completions"
    assert m[("chatsmith_requests_total", (("endpoint", chat), ("status", "200")))] == 3
    assert m[("chatsmith_requests_total", (("endpoint", chat), ("status", "400")))] == 1
    assert m[("chatsmith_requests_total", (("endpoint", "/metrics"), ("status", "200")))] == 1
    assert m[("chatsmith_prompt_tokens_total", ())] == usage["prompt_tokens"]
    assert m[("chatsmith_completion_tokens_total", ())] == usage["completion_tokens"]
    # one first token per reply, one gap for every later token
    assert m[("chatsmith_time_to_first_token_seconds_count", ())] == replies
    gaps = m[("chatsmith_time_per_output_token_seconds_count", ())]
    assert gaps == usage["completion_tokens"] - replies
    assert m[("chatsmith_time_to_first_token_seconds_sum", ())] > 0
    assert m[("chatsmith_queue_depth", ())] == 0
    assert m[("chatsmith_slots_in_use", ())] == 0


def test_metrics_need_the_key_when_one_is_set(tiny_run):
    app = create_app(load_run(tiny_run, "cpu"), ServeLimits(max_batch=1, max_queue=1), "k3y")
    with LiveServer(app) as srv:
        assert httpx.get(srv.url + "/metrics", timeout=30).status_code == 401
        ok = httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer k3y"}, timeout=30)
        assert ok.status_code == 200 and "chatsmith_slots 1.0" in ok.text
        # the refused scrape was counted, by status
        assert 'chatsmith_requests_total{endpoint="/metrics",status="401"} 1.0' in ok.text

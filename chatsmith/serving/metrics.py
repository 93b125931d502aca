"""`GET /metrics`: the server's counters in the Prometheus text format.

Requests (by endpoint and status), prompt and completion tokens, time to first token and the
time between tokens of one sequence (histograms), queue depth and slots in use. Each app has
its own registry (not prometheus_client's global one), so several servers in one process, as
in the tests, do not share or clash. The token figures are observed by the scheduler's engine
thread as tokens are produced; queue depth and slots are read from the scheduler when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

# endpoints counted by name; anything else (scanners, typos) is "other", so that the label
# cannot grow without bound
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _SchedulerGauges:
    """Queue depth and slots, read from the scheduler at scrape time."""

    def __init__(self, stats: Callable[[], dict]):
        self.stats = stats

    def collect(self):
        s = self.stats()
        for name, doc, value in (
            ("chatsmith_queue_depth", "Sequences waiting for a slot.", s.get("waiting", 0)),
            ("chatsmith_slots_in_use", "Sequences being generated.", s.get("running", 0)),
            ("chatsmith_slots", "Sequences the engine decodes together.", s.get("slots", 0)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


class ServeMetrics:
    def __init__(self, stats: Callable[[], dict]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "chatsmith_requests", "HTTP requests answered.", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "chatsmith_prompt_tokens", "Prompt tokens admitted for generation.", registry=r
        )
        self.completion_tokens = Counter(
            "chatsmith_completion_tokens", "Tokens generated.", registry=r
        )
        self.ttft = Histogram(
            "chatsmith_time_to_first_token_seconds",
            "From a sequence's arrival to its first token.",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.token_latency = Histogram(
            "chatsmith_time_per_output_token_seconds",
            "Between two consecutive tokens of one sequence.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        r.register(_SchedulerGauges(stats))

    # ---- observed by the scheduler ------------------------------------------------------

    def admitted(self, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)

    def token(self, since_arrival: float, since_last: float | None) -> None:
        """One generated token: `since_last` is None for a sequence's first token."""
        self.completion_tokens.inc()
        if since_last is None:
            self.ttft.observe(since_arrival)
        else:
            self.token_latency.observe(since_last)

    # ---- HTTP side ----------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountRequests:
    """ASGI middleware counting every HTTP response by endpoint and status code; outermost,
    so that the body guard's 413s are counted too."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = "/v1/models" if path.startswith("/v1/models/") else path
        if endpoint not in ENDPOINTS:
            endpoint = "other"

        async def send_counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, send_counted)

"""Limits that keep one server healthy under load and hostile input."""

from __future__ import annotations

from dataclasses import dataclass

from chatsmith.errors import ChatsmithError


@dataclass(frozen=True)
class ServeLimits:
    """What one server accepts.

    `max_batch` sequences decode together (the engine's slots); up to `max_queue` more requests
    wait for a slot; beyond that a request is turned away with 429 and `Retry-After`.
    """

    max_tokens: int = 1024  # most new tokens one choice may ask for
    default_max_tokens: int = 256  # when a request does not say
    max_batch: int = 16  # concurrent sequences in the engine
    max_queue: int = 64  # requests waiting for a slot
    max_body_bytes: int = 1_000_000  # request body size
    max_n: int = 4  # choices per request
    retry_after_s: int = 1  # hint sent with 429/503
    engine_stall_s: float = 300.0  # one engine step longer than this: stuck (503, /health)
    # slow or idle clients: each connection holds memory and counts against max_connections
    header_timeout_s: float = 10.0  # for a request's headers, from the first byte
    body_timeout_s: float = 30.0  # most time between two pieces of a request body
    keep_alive_s: float = 5.0  # an idle connection between requests
    max_connections: int = 256  # open at once; more are answered 503 at once

    def validate(self) -> None:
        for name in (
            "max_tokens",
            "default_max_tokens",
            "max_batch",
            "max_body_bytes",
            "max_n",
            "retry_after_s",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise ChatsmithError(
                    f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}"
                )
        for name in ("engine_stall_s", "header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise ChatsmithError(
                    f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if self.max_queue < 0:
            raise ChatsmithError(f"max-queue must be >= 0, got {self.max_queue}")

"""What every request passes before a route: the cross-site guard (Host names, JSON bodies),
the body guard (size and read timeout), both ASGI, then the API-key check (a dependency)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Iterable

from fastapi import Request
from fastapi.responses import JSONResponse

from chatsmith.serving.errors import APIError


def _too_big_error(limit: int) -> APIError:
    return APIError(413, f"the request body exceeds {limit} bytes", code="body_too_large")


def _declared_length_error(scope: dict, limit: int) -> JSONResponse | None:
    """The answer to a Content-Length over the limit or not a number; None when it is fine."""
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                if int(value) > limit:
                    return _too_big_error(limit).response()
            except ValueError:
                return APIError(400, "bad Content-Length").response()
    return None


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(address: str) -> bool:
    try:
        return address == "localhost" or ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(bind: str, extra: Iterable[str] = ()) -> tuple[str, ...] | None:
    """The Host names a server bound to `bind` answers: loopback names (and `extra`) when
    bound to loopback or given names; any (None) when bound elsewhere with none given."""
    extra = tuple(extra)
    if is_loopback(bind) or extra:
        return (*LOOPBACK_HOSTS, *extra)
    return None


# methods that never carry a body; every other one is an API call that must send JSON
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(scope: dict) -> str:
    """The name in the request's Host header, without port or brackets, lower case."""
    host = next((v for k, v in scope.get("headers", []) if k == b"host"), b"")
    host = host.decode("latin-1").strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1 : host.find("]")] if "]" in host else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".")


def is_json(scope: dict) -> bool:
    """Whether Content-Type is JSON (application/json, application/*+json, any parameters)."""
    value = next((v for k, v in scope.get("headers", []) if k == b"content-type"), b"")
    kind = value.decode("latin-1").split(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


class CrossSiteGuard:
    """ASGI middleware against pages on other sites that a browser on this machine visits.

    A page may POST to any address with a "simple" content type (text/plain, form encoding,
    none) without the browser asking first (no CORS preflight), so API calls must be JSON
    (415 otherwise). A page served from a name the attacker controls that resolves to this
    machine (DNS rebinding) reads the replies as same-origin, so only the Host names in
    `allowed_hosts` are served (421 otherwise; None: any).
    """

    def __init__(self, app, allowed_hosts: Iterable[str] | None):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            error = self._refusal(scope)
            if error is not None:
                return await error.response()(scope, receive, send)
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict) -> APIError | None:
        if self.allowed is not None:
            name = host_name(scope)
            if name not in self.allowed:
                return APIError(
                    421,
                    f"this server does not answer to the host name {name[:100]!r}; "
                    "start it with --allowed-host NAME to allow a name",
                    code="host_not_allowed",
                )
        if scope["method"] not in _BODILESS and not is_json(scope):
            return APIError(
                415,
                "the request body must be JSON: send 'Content-Type: application/json'",
                code="unsupported_media_type",
            )
        return None


class BodyGuard:
    """ASGI middleware: 413 for a body over `limit` bytes, 408 for one that stops arriving for
    `timeout` seconds (a client sending half a body would hold its connection for good)."""

    def __init__(self, app, limit: int, timeout: float):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        early = _declared_length_error(scope, self.limit)
        if early is not None:
            return await early(scope, receive, send)
        # a body without (or lying about) Content-Length is counted as the app reads it
        await _GuardedBody(self, scope, receive, send).run(self.app)


class _Refused(Exception):
    pass


class _GuardedBody:
    """One request whose body is counted and timed as it arrives; past a limit, the answer is
    the refusal (413 or 408) whatever the app makes of the interrupted read."""

    def __init__(self, guard: BodyGuard, scope, receive, send):
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.seen, self.body_done = 0, False
        self.refusal: JSONResponse | None = None
        self.answered = False

    async def run(self, app) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except _Refused:
            await self._answer()

    async def receive(self):
        if self.body_done:  # later reads only wait for a disconnect: no deadline
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), self.guard.timeout)
        except TimeoutError:
            self._refuse(
                APIError(
                    408,
                    f"the request body stopped arriving for {self.guard.timeout:g} s",
                    code="body_timeout",
                    headers={"Connection": "close"},
                )
            )
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.guard.limit:
                self._refuse(_too_big_error(self.guard.limit))
        return message

    def _refuse(self, error: APIError):
        self.refusal = error.response()
        raise _Refused

    async def send(self, message) -> None:
        # once refused, whatever the app answers (FastAPI turns the interrupted read into a
        # 400) is replaced by the refusal
        if self.refusal is None:
            return await self._send(message)
        await self._answer()

    async def _answer(self) -> None:
        if not self.answered:
            self.answered = True
            await self.refusal(self.scope, self._receive, self._send)


def key_matches(request: Request) -> bool:
    """Whether the request carries the configured key as `Authorization: Bearer KEY`.

    Header values arrive decoded as Latin-1 (HTTP's own charset); encoding back gives the bytes
    the client sent, which are compared with the key's UTF-8 bytes, so a non-ASCII key works
    from clients that send UTF-8 (as they all do)."""
    api_key = request.app.state.server.api_key
    if api_key is None:
        return False
    raw = request.headers.get("authorization", "").encode("latin-1")
    scheme, _, key = raw.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(key.strip(), api_key.encode())


async def authorize(request: Request) -> None:
    """Route dependency: with an API key configured, require `Authorization: Bearer KEY`."""
    if request.app.state.server.api_key is not None and not key_matches(request):
        raise APIError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer KEY')",
            code="invalid_api_key",
        )

"""What every request passes before a route: the body-size guard (ASGI) and the API-key check."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.responses import JSONResponse

from chatsmith.serving.errors import APIError


def _too_big(limit: int) -> JSONResponse:
    return APIError(
        413, f"the request body exceeds {limit} bytes", code="body_too_large"
    ).response()


def _as_json(scope: dict) -> dict:
    """The API only speaks JSON: read a POST body as JSON whatever Content-Type says (curl -d
    sends form encoding), as other OpenAI-compatible servers do."""
    if scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
        return scope
    headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}


def _declared_length_error(scope: dict, limit: int) -> JSONResponse | None:
    """The answer to a Content-Length over the limit or not a number; None when it is fine."""
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                if int(value) > limit:
                    return _too_big(limit)
            except ValueError:
                return APIError(400, "bad Content-Length").response()
    return None


class BodyGuard:
    """ASGI middleware: JSON bodies for the API, and 413 for a body over `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = _as_json(scope)
        early = _declared_length_error(scope, self.limit)
        if early is not None:
            return await early(scope, receive, send)
        # a body without (or lying about) Content-Length is counted as the app reads it
        await _CountedBody(self.limit, scope, receive, send).run(self.app)


class _BodyTooLarge(Exception):
    pass


class _CountedBody:
    """One request whose body is counted as it arrives; past the limit the answer is a 413."""

    def __init__(self, limit: int, scope, receive, send):
        self.limit, self.scope, self._receive, self._send = limit, scope, receive, send
        self.seen, self.exceeded, self.answered = 0, False, False

    async def run(self, app) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except _BodyTooLarge:
            await self._answer_too_big()

    async def receive(self):
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise _BodyTooLarge
        return message

    async def send(self, message) -> None:
        # once the body ran over, whatever the app answers (FastAPI turns the error into a
        # 400) is replaced by the 413
        if not self.exceeded:
            return await self._send(message)
        await self._answer_too_big()

    async def _answer_too_big(self) -> None:
        if not self.answered:
            self.answered = True
            await _too_big(self.limit)(self.scope, self._receive, self._send)


async def authorize(request: Request) -> None:
    """Route dependency: with an API key configured, require `Authorization: Bearer KEY`."""
    api_key = request.app.state.server.api_key
    if api_key is None:
        return
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        key.strip().encode(), api_key.encode()
    ):
        raise APIError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer KEY')",
            code="invalid_api_key",
        )

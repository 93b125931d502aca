"""Every failure answered as OpenAI-style JSON: `APIError` and the app's exception handlers."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatsmith.serving.protocol import error_body

log = logging.getLogger("chatsmith.serve")


class APIError(Exception):
    """An error answered as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _param_of(loc: tuple) -> str | None:
    """A request field's name, as OpenAI errors give it, from a pydantic error location."""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    if not parts or not isinstance(parts[0], str):
        return None
    name = parts[0]
    if name == "messages" and len(parts) > 1 and isinstance(parts[1], int):
        name += f"[{parts[1]}]"
        if len(parts) > 2 and parts[2] in ("role", "content"):
            name += f".{parts[2]}"
    return name


def validation_error(exc: RequestValidationError) -> APIError:
    """The 400 for a request body pydantic rejected, naming the field at fault."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request")
    # a union field (stop: str | list) reports one error per member: the deepest is the telling one
    first = _param_of(tuple(errors[0].get("loc", ())))
    same = [e for e in errors if _param_of(tuple(e.get("loc", ()))) == first]
    err = max(same, key=lambda e: len(e.get("loc", ())))
    kind, loc = err.get("type", ""), tuple(err.get("loc", ()))
    if kind == "json_invalid":
        return APIError(
            400, f"the body is not valid JSON ({err.get('msg', '')})", code="invalid_json"
        )
    param = _param_of(loc)
    if param is None:
        if kind == "missing":
            return APIError(400, "the request needs a JSON body", code="invalid_body")
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    return APIError(
        400, f"{param}: {err.get('msg', 'invalid value')}", param=param, code="invalid_value"
    )


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(exc).response()


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 for an unknown path, 405 for a wrong method, ...: still OpenAI-style JSON."""
    type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse(
        error_body(str(exc.detail), type_),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _bug)

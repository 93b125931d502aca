"""The FastAPI app: OpenAI-compatible endpoints over the shared engine, and the chat page."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatsmith.chat_template import render_prompt, validate_messages
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.loading import LoadedRun
from chatsmith.inference.streaming import TextStream
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    error_body,
    new_id,
    now,
    usage,
)
from chatsmith.serving.scheduler import QueueFull, Scheduler, Ticket

log = logging.getLogger("chatsmith.serve")
STATIC = Path(__file__).parent / "static"


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
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type_,
            param,
            code,
        )
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.param, self.code),
            status_code=self.status,
            headers=self.headers,
        )


class _ChoiceText:
    """Token ids of one choice -> text, with stop strings applied at the text level.

    Text that might be the start of a stop string is held back until it is known not to be,
    so a streamed reply never shows part of a stop string.
    """

    def __init__(self, stream: TextStream, stops: list[str]):
        self.stream, self.stops = stream, stops
        self.held = ""
        self.text = ""
        self.tokens = 0
        self.finish: str | None = None

    def push(self, token: int) -> str:
        self.tokens += 1
        self.held += self.stream.push(token)
        return self._release(final=False)

    def end(self, reason: str) -> str:
        self.held += self.stream.flush()
        piece = self._release(final=True)
        self.finish = self.finish or reason
        return piece

    def _release(self, final: bool) -> str:
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            piece, self.held, self.finish = self.held[:cut], "", "stop"
        elif final or not self.stops:
            piece, self.held = self.held, ""
        else:
            keep = 0
            for s in self.stops:
                for k in range(min(len(s) - 1, len(self.held)), keep, -1):
                    if self.held.endswith(s[:k]):
                        keep = k
                        break
            piece = self.held[: len(self.held) - keep]
            self.held = self.held[len(piece) :]
        self.text += piece
        return piece


class Server:
    """State shared by the request handlers: model, tokenizer, limits and the scheduler."""

    def __init__(self, loaded: LoadedRun, limits: ServeLimits, api_key: str | None):
        limits.validate()
        self.loaded, self.limits, self.api_key = loaded, limits, api_key
        self.tok = loaded.tokenizer
        self.model_id = loaded.name
        self.context = loaded.cfg.max_seq_len
        # every special token ends a reply: a marker can never show up as reply text
        self.engine = Engine(
            loaded.model,
            stop_ids=sorted(self.tok.special_ids | set(self.tok.chat.stop_ids)),
            max_batch=limits.max_batch,
            cuda_graph=True,
        )
        self.scheduler: Scheduler | None = None

    def start(self) -> None:
        if self.scheduler is None:
            self.scheduler = Scheduler(self.engine, self.limits.max_queue)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None

    # ---- request -> sampling ---------------------------------------------------------------

    def sampling(self, req: SamplingRequest, max_tokens: int | None) -> list[SamplingParams]:
        lim = self.limits
        n = req.n or 1
        if n > lim.max_n:
            raise APIError(400, f"n must be at most {lim.max_n}, got {n}", param="n")
        if max_tokens is not None and max_tokens > lim.max_tokens:
            raise APIError(
                400,
                f"max_tokens must be at most {lim.max_tokens}, got {max_tokens}",
                param="max_tokens",
            )
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        if top_p == 0:  # OpenAI accepts 0: only the likeliest token survives
            temperature, top_p = 0.0, 1.0
        out = []
        for i in range(n):
            seed = None if req.seed is None else (req.seed + i) % 2**64
            out.append(
                SamplingParams(
                    max_tokens=max_tokens or min(lim.default_max_tokens, lim.max_tokens),
                    temperature=temperature,
                    top_p=top_p,
                    top_k=req.top_k,
                    seed=seed,
                )
            )
        return out

    def check_length(self, ids: list[int], param: str) -> None:
        if len(ids) >= self.context:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; this model's context is {self.context} "
                "tokens, which leaves no room for a reply: shorten it",
                param=param,
                code="context_length_exceeded",
            )

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> Ticket:
        if self.scheduler is None:
            raise APIError(
                503,
                "the server is not running",
                "server_error",
                headers={"Retry-After": str(self.limits.retry_after_s)},
            )
        try:
            return self.scheduler.submit(prompts, params)
        except QueueFull as e:
            raise APIError(
                429,
                str(e),
                "rate_limit_exceeded",
                code="queue_full",
                headers={"Retry-After": str(self.limits.retry_after_s)},
            ) from None

    def cancel(self, ticket: Ticket, indices: list[int] | None = None) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(ticket, indices)

    async def pieces(
        self, ticket: Ticket, stops: list[str]
    ) -> AsyncIterator[tuple[int, str, _ChoiceText]]:
        """(choice index, new text, state) as tokens arrive, until every choice has finished."""
        states = [_ChoiceText(TextStream(self.tok), stops) for _ in ticket.jobs]
        remaining = len(states)
        while remaining:
            for idx, token, reason in await ticket.events.get():
                st = states[idx]
                if st.finish is not None:
                    continue
                if reason is not None and reason.startswith("error:"):
                    raise APIError(500, reason[len("error:") :], "server_error")
                piece = "" if token is None else st.push(token)
                if st.finish is not None:  # a stop string: free the slot now
                    self.cancel(ticket, [idx])
                elif reason is not None:
                    piece += st.end(reason)
                if piece or st.finish is not None:
                    yield idx, piece, st
                if st.finish is not None:
                    remaining -= 1


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


def _validation_error(exc: RequestValidationError) -> APIError:
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


class BodyGuard:
    """ASGI middleware: JSON bodies for the API, and 413 for a body over `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            # the API only speaks JSON: read the body as JSON whatever Content-Type says
            # (curl -d sends form encoding), as other OpenAI-compatible servers do
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        too_big = APIError(
            413, f"the request body exceeds {self.limit} bytes", code="body_too_large"
        ).response()
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    if int(value) > self.limit:
                        return await too_big(scope, receive, send)
                except ValueError:
                    return await APIError(400, "bad Content-Length").response()(
                        scope, receive, send
                    )
        seen, exceeded, answered = 0, False, False

        async def counted():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded(message):
            # once the body ran over, whatever the app answers (FastAPI turns the error into
            # a 400) is replaced by the 413
            nonlocal answered
            if not exceeded:
                return await send(message)
            if not answered:
                answered = True
                await too_big(scope, receive, send)

        try:
            await self.app(scope, counted, guarded)
        except _BodyTooLarge:
            if not answered:
                await too_big(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def sse(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


def create_app(
    loaded: LoadedRun, limits: ServeLimits | None = None, api_key: str | None = None
) -> FastAPI:
    """The app for one loaded run. The engine thread starts with the app and stops with it."""
    server = Server(loaded, limits or ServeLimits(), api_key)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        try:
            yield
        finally:
            server.stop()

    app = FastAPI(
        title="chatsmith",
        version="1",
        lifespan=lifespan,
        description="OpenAI-compatible API for a chatsmith model.",
    )
    app.state.server = server
    app.add_middleware(BodyGuard, limit=server.limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(str(exc.detail), type_),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    async def authorize(request: Request) -> None:
        if server.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), server.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or wrong API key (send 'Authorization: Bearer KEY')",
                code="invalid_api_key",
            )

    def model_card() -> dict:
        return {
            "id": server.model_id,
            "object": "model",
            "created": now(),
            "owned_by": "chatsmith",
            "context_length": server.context,
        }

    @app.get("/health", tags=["server"])
    async def health() -> dict:
        stats = server.scheduler.stats() if server.scheduler else {}
        return {
            "status": "ok" if server.scheduler else "stopped",
            "model": server.model_id,
            **stats,
        }

    @app.get("/v1/models", dependencies=[Depends(authorize)], tags=["openai"])
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model}", dependencies=[Depends(authorize)], tags=["openai"])
    async def get_model(model: str) -> dict:
        if model != server.model_id:
            raise APIError(
                404,
                f"model {model!r} not found; this server has {server.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)], tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        try:
            messages = validate_messages(messages, where="messages")
        except ChatsmithError as e:
            raise APIError(400, str(e), param="messages") from None
        ids = render_prompt(server.tok, messages)
        server.check_length(ids, "messages")
        params = server.sampling(body, body.max_completion_tokens or body.max_tokens)
        ticket = server.submit([ids] * len(params), params)
        return await _respond(request, ticket, body, len(ids), chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorize)], tags=["openai"])
    async def completions(body: CompletionRequest, request: Request):
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        prompts = [[*server.tok.doc_start, *server.tok.encode(t)] for t in texts]
        for i, ids in enumerate(prompts):
            server.check_length(ids, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        params = server.sampling(body, body.max_tokens)
        n = len(params)
        ticket = server.submit([p for p in prompts for _ in range(n)], params * len(prompts))
        return await _respond(request, ticket, body, sum(map(len, prompts)), chat=False)

    async def _respond(
        request: Request, ticket: Ticket, body: SamplingRequest, prompt_tokens: int, chat: bool
    ):
        rid, created = new_id("chatcmpl" if chat else "cmpl"), now()
        stops = body.stop_list()
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            gen = _stream(ticket, stops, rid, created, prompt_tokens, chat, include_usage)
            return StreamingResponse(
                gen,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                background=BackgroundTask(server.cancel, ticket),
            )
        try:
            states = await _collect(request, ticket, stops)
        finally:
            server.cancel(ticket)
        choices = []
        for i, st in enumerate(states):
            if chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": st.text},
                        "logprobs": None,
                        "finish_reason": st.finish,
                    }
                )
            else:
                choices.append(
                    {"index": i, "text": st.text, "logprobs": None, "finish_reason": st.finish}
                )
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": server.model_id,
            "system_fingerprint": None,
            "choices": choices,
            "usage": usage(prompt_tokens, sum(st.tokens for st in states)),
        }

    async def _collect(request: Request, ticket: Ticket, stops: list[str]) -> list[_ChoiceText]:
        states: dict[int, _ChoiceText] = {}
        it = server.pieces(ticket, stops).__aiter__()
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            while not nxt.done():
                await asyncio.wait({nxt}, timeout=0.5)
                if not nxt.done() and await request.is_disconnected():
                    nxt.cancel()
                    raise APIError(499, "client closed the request")
            try:
                idx, _, st = nxt.result()
            except StopAsyncIteration:
                break
            states[idx] = st
        return [states[i] for i in sorted(states)]

    async def _stream(
        ticket: Ticket,
        stops: list[str],
        rid: str,
        created: int,
        prompt_tokens: int,
        chat: bool,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        extra = {"usage": None} if include_usage else {}

        def chunk(idx: int, text: str | None, finish: str | None, delta: dict | None = None) -> str:
            if chat:
                if delta is None:
                    delta = {} if text is None else {"content": text}
                choice = {"index": idx, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {
                    "index": idx,
                    "text": text or "",
                    "logprobs": None,
                    "finish_reason": finish,
                }
            return sse(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": server.model_id,
                    "system_fingerprint": None,
                    "choices": [choice],
                    **extra,
                }
            )

        states: dict[int, _ChoiceText] = {}
        try:
            if chat:
                for i in range(len(ticket.jobs)):
                    yield chunk(i, None, None, {"role": "assistant", "content": ""})
            try:
                async for idx, piece, st in server.pieces(ticket, stops):
                    states[idx] = st
                    if piece:
                        yield chunk(idx, piece, None)
                    if st.finish is not None:
                        yield chunk(idx, None if chat else "", st.finish)
            except APIError as e:
                yield sse(error_body(e.message, e.type, e.param, e.code))
            if include_usage:
                used = sum(st.tokens for st in states.values())
                yield sse(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": server.model_id,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": usage(prompt_tokens, used),
                    }
                )
            yield "data: [DONE]\n\n"
        finally:
            server.cancel(ticket)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

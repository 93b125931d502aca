"""Answers of the two completion endpoints: whole JSON bodies, or server-sent event chunks.

Chat and text completions differ only in names and in how one choice is written; `CHAT` and
`COMPLETION` (each a `Kind`) hold those differences, and everything else is shared: a `Reply`
carries what every body and chunk of one response repeats (id, creation time, model).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from chatsmith.serving.errors import APIError
from chatsmith.serving.protocol import SamplingRequest, new_id, now, usage
from chatsmith.serving.scheduler import Ticket
from chatsmith.serving.server import ChoiceText, Server


class Kind(Protocol):
    """What differs between chat and text completions."""

    id_prefix: str
    object: str  # of a whole body
    chunk_object: str  # of a streamed chunk

    def choice(self, index: int, st: ChoiceText) -> dict:
        """One finished choice in a whole body."""
        ...

    def delta(self, index: int, text: str | None, finish: str | None) -> dict:
        """One choice's new text (None: none) or finish reason in a chunk."""
        ...

    def opening(self, index: int) -> dict | None:
        """The chunk a choice's stream starts with, before any text (None: no such chunk)."""
        ...


class CompletionKind:
    """Text completions: a choice is `{"text": ...}`, streamed as more text."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def choice(self, index: int, st: ChoiceText) -> dict:
        return {"index": index, "text": st.text, "logprobs": None, "finish_reason": st.finish}

    def delta(self, index: int, text: str | None, finish: str | None) -> dict:
        return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

    def opening(self, index: int) -> dict | None:
        return None


class ChatKind:
    """Chat completions: a choice is an assistant message, streamed as deltas of one."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def choice(self, index: int, st: ChoiceText) -> dict:
        message = {"role": "assistant", "content": st.text}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": st.finish}

    def delta(self, index: int, text: str | None, finish: str | None) -> dict:
        delta = {} if text is None else {"content": text}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def opening(self, index: int) -> dict | None:
        delta = {"role": "assistant", "content": ""}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


COMPLETION, CHAT = CompletionKind(), ChatKind()


def sse(obj: dict | str) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n"


# stands for a chunk's text while its template is made; its JSON form is then cut out (no
# id or model name holds NUL characters)
_TEXT = "\x00text\x00"


@dataclass(frozen=True)
class Reply:
    """One response's shared fields; with `stream_usage`, each chunk has `"usage": null`."""

    kind: Kind
    id: str
    created: int
    model: str
    prompt_tokens: int
    stream_usage: bool
    _templates: dict = field(default_factory=dict, compare=False, repr=False)

    def text_chunk(self, index: int, text: str) -> str:
        """`chunk(kind.delta(index, text, None))`, byte for byte, from a template made once
        per choice: only the text is encoded per token (most of a stream's chunks)."""
        parts = self._templates.get(index)
        if parts is None:
            quoted = json.dumps(_TEXT)
            before, after = self.chunk(self.kind.delta(index, _TEXT, None)).split(quoted)
            parts = self._templates[index] = (before, after)
        return parts[0] + json.dumps(text) + parts[1]

    def envelope(self, obj: str, choices: list[dict], **extra) -> dict:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    def body(self, states: list[ChoiceText]) -> dict:
        choices = [self.kind.choice(i, st) for i, st in enumerate(states)]
        used = usage(self.prompt_tokens, sum(st.tokens for st in states))
        return self.envelope(self.kind.object, choices, usage=used)

    def chunk(self, choice: dict) -> str:
        extra = {"usage": None} if self.stream_usage else {}
        return sse(self.envelope(self.kind.chunk_object, [choice], **extra))

    def usage_chunk(self, states: list[ChoiceText]) -> str:
        used = usage(self.prompt_tokens, sum(st.tokens for st in states))
        return sse(self.envelope(self.kind.chunk_object, [], usage=used))


async def respond(
    request: Request,
    server: Server,
    ticket: Ticket,
    body: SamplingRequest,
    prompt_tokens: int,
    kind: Kind,
):
    """The whole reply as one JSON body, or (`stream`) an SSE response that yields it in chunks."""
    stream_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    reply = Reply(kind, new_id(kind.id_prefix), now(), server.model_id, prompt_tokens, stream_usage)
    stops = body.stop_list()
    if body.stream:
        return StreamingResponse(
            _chunks(server, ticket, stops, reply),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(server.cancel, ticket),
        )
    try:
        states = await _collect(request, server, ticket, stops)
    finally:
        server.cancel(ticket)
    return reply.body(states)


async def _collect(
    request: Request, server: Server, ticket: Ticket, stops: list[str]
) -> list[ChoiceText]:
    """Every choice's final state; a client that hangs up meanwhile cancels the work (499)."""
    states: dict[int, ChoiceText] = {}
    it = server.pieces(ticket, stops).__aiter__()
    while True:
        nxt = asyncio.ensure_future(it.__anext__())
        while not nxt.done():
            await asyncio.wait({nxt}, timeout=0.5)
            if not nxt.done() and await request.is_disconnected():
                nxt.cancel()
                raise APIError(499, "client closed the request")
        try:
            batch = nxt.result()
        except StopAsyncIteration:
            break
        for idx, _, _, st in batch:
            states[idx] = st
    return [states[i] for i in sorted(states)]


async def _chunks(
    server: Server, ticket: Ticket, stops: list[str], reply: Reply
) -> AsyncIterator[str]:
    """SSE events: each choice's text as it comes, its finish, usage if asked, then [DONE]."""
    kind, states = reply.kind, {}
    try:
        for i in range(len(ticket.jobs)):
            opening = kind.opening(i)
            if opening is not None:
                yield reply.chunk(opening)
        try:
            async for batch in server.pieces(ticket, stops):
                # one write for everything that arrived together: each write is a trip through
                # the ASGI stack, the HTTP framing and a system call
                out = []
                for idx, piece, finish, st in batch:
                    states[idx] = st
                    if piece:
                        out.append(reply.text_chunk(idx, piece))
                    if finish is not None:
                        out.append(reply.chunk(kind.delta(idx, None, finish)))
                yield "".join(out)
        except APIError as e:  # headers are gone: the error travels as an event
            yield sse(e.body())
        if reply.stream_usage:
            yield reply.usage_chunk(list(states.values()))
        yield "data: [DONE]\n\n"
    finally:
        server.cancel(ticket)

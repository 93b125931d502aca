"""The streaming path's per-token shortcuts: chunk templates, the ticket inbox, one write per
wake-up. Each must give exactly what the plain path gives."""

from __future__ import annotations

import asyncio
import json

import pytest

from chatsmith.inference.engine import SamplingParams
from chatsmith.inference.loading import load_run
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.responses import CHAT, COMPLETION, Reply, _chunks
from chatsmith.serving.scheduler import Ticket, _Job
from chatsmith.serving.server import Server


@pytest.mark.parametrize("kind", [CHAT, COMPLETION])
@pytest.mark.parametrize("stream_usage", [False, True])
def test_text_chunk_is_the_plain_chunk_byte_for_byte(kind, stream_usage):
    reply = Reply(kind, "chatcmpl-x", 1700000000, 'run "q"', 12, stream_usage)
    for index in (0, 2):
        for text in ("Hello", ' "quoted"\n\ttab \\ ', "héllo ☃ 🙂", "\x00text\x00", ""):
            assert reply.text_chunk(index, text) == reply.chunk(kind.delta(index, text, None))


def test_ticket_gives_everything_that_arrived_and_wakes_its_reader():
    async def go():
        ticket = Ticket(asyncio.get_running_loop())
        assert await ticket.wait(0.01) is False and ticket.take() == []  # nothing: times out
        ticket.deliver([(0, 5, None)])
        ticket.deliver([(0, 6, None), (1, None, "stop")])
        assert await ticket.wait(10) is True  # already there: no waiting
        assert ticket.take() == [(0, 5, None), (0, 6, None), (1, None, "stop")]
        assert ticket.take() == []
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, ticket.deliver, [(0, 7, None)])
        assert await ticket.wait(10) is True and ticket.take() == [(0, 7, None)]

    asyncio.run(go())


def test_a_lagging_stream_sends_what_arrived_as_one_write_with_one_finish(tiny_run):
    """Tokens and the finish of a choice arriving before its reader wakes: one write holds
    their chunks in order, and the finish reason is sent once, at the end."""
    loaded = load_run(tiny_run, "cpu")
    server = Server(loaded, ServeLimits(max_batch=1), api_key=None)  # not started: no engine
    ids = loaded.tokenizer.encode("Hello there")

    async def go():
        ticket = Ticket(asyncio.get_running_loop())
        ticket.jobs = [_Job(ticket, 0, [1], SamplingParams())]
        reply = Reply(CHAT, "chatcmpl-x", 1, "m", 1, True)
        for t in ids:
            ticket.deliver([(0, t, None)])
        ticket.deliver([(0, None, "length")])
        return [w async for w in _chunks(server, ticket, [], reply)]

    writes = asyncio.run(go())
    opening, burst, usage, done = writes
    assert json.loads(opening[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
    events = [json.loads(e[len("data: ") :]) for e in burst.split("\n\n") if e]
    assert len(events) == len(ids) + 1
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == loaded.tokenizer.decode(ids)
    finishes = [e["choices"][0]["finish_reason"] for e in events]
    assert finishes == [None] * len(ids) + ["length"]
    assert json.loads(usage[len("data: ") :])["usage"]["completion_tokens"] == len(ids)
    assert done == "data: [DONE]\n\n"

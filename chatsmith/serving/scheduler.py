"""Continuous batching: one thread owns the engine; requests join and leave between steps.

Request handlers run on the asyncio event loop; the engine runs on its own thread so that a
decode step never blocks the loop. A request becomes a `Ticket` holding one sequence per
choice. Between two decode steps the engine thread admits waiting sequences into free slots
(prefill), releases the sequences of tickets that were cancelled (client gone, stop string
seen), then runs one batched `Engine.step` for everyone and posts each ticket its tokens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, Generation, SamplingParams

log = logging.getLogger("chatsmith.serve")

# One event: (choice index, token or None, finish reason or None). A finish reason that starts
# with "error:" carries a message for the client.
Event = tuple[int, "int | None", "str | None"]


# most padded prompt tokens prefilled in one forward pass (bounds the (B, S, V) logits)
PREFILL_TOKENS = 2048


class QueueFull(ChatsmithError):
    """More requests are waiting than the server is configured to hold."""


@dataclass(eq=False)
class _Job:
    ticket: Ticket
    index: int
    prompt: list[int]
    params: SamplingParams
    seq: Generation | None = None
    done: bool = False
    arrived: float = field(default_factory=time.perf_counter)
    last_token: float | None = None


@dataclass(eq=False)
class Ticket:
    """One request's sequences; their events arrive on `events` as lists, one list per step."""

    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    jobs: list[_Job] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)  # choice indices to stop


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int, metrics=None):
        """`metrics` (a serving.metrics.ServeMetrics) is told of admitted prompts and tokens."""
        self.engine = engine
        self.metrics = metrics
        self.capacity = engine.max_batch + max_queue
        self._cv = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._to_cancel: list[_Job] = []
        self._outstanding = 0  # sequences waiting or generating
        self._by_seq: dict[Generation, _Job] = {}
        self._closing = False
        self.steps = 0
        self.tokens = 0
        self.step_seconds = 0.0  # time inside Engine.step (decode)
        self.prefill_seconds = 0.0  # time inside Engine.add (prompt prefill)
        self._thread = threading.Thread(target=self._run, name="chatsmith-engine", daemon=True)
        self._thread.start()

    # ---- called from the event loop -------------------------------------------------------

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> Ticket:
        """Queue one sequence per choice; raise QueueFull when there is no room."""
        ticket = Ticket(asyncio.get_running_loop())
        ticket.jobs = [_Job(ticket, i, p, sp) for i, (p, sp) in enumerate(zip(prompts, params))]
        with self._cv:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if self._outstanding + len(ticket.jobs) > self.capacity:
                raise QueueFull(
                    f"the server is busy ({self._outstanding} sequences running or "
                    "queued); retry shortly"
                )
            self._outstanding += len(ticket.jobs)
            self._waiting.extend(ticket.jobs)
            self._cv.notify()
        return ticket

    def cancel(self, ticket: Ticket, indices: list[int] | None = None) -> None:
        """Stop some or all of a ticket's sequences; their slots are freed before the next step."""
        with self._cv:
            for job in ticket.jobs:
                if (indices is None or job.index in indices) and not job.done:
                    ticket.cancelled.add(job.index)
                    self._to_cancel.append(job)
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {
                "running": len(self._by_seq),
                "waiting": len(self._waiting),
                "slots": self.engine.max_batch,
                "steps": self.steps,
                "tokens": self.tokens,
                "step_seconds": round(self.step_seconds, 3),
                "prefill_seconds": round(self.prefill_seconds, 3),
            }

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ---- the engine thread ----------------------------------------------------------------

    def _finish(self, job: _Job, out: dict, reason: str | None) -> None:
        """Mark a job done (lock held); queue its last event unless it was cancelled."""
        if job.done:
            return
        job.done = True
        self._outstanding -= 1
        if job.seq is not None:
            self._by_seq.pop(job.seq, None)
        if reason is not None:
            out.setdefault(job.ticket, []).append((job.index, None, reason))

    def _run(self) -> None:
        engine = self.engine
        while True:
            out: dict[Ticket, list[Event]] = {}
            with self._cv:
                while not (self._waiting or self._to_cancel or engine.live or self._closing):
                    self._cv.wait()
                if self._closing:
                    for job in [*self._waiting, *self._by_seq.values()]:
                        self._finish(job, out, "error:the server is shutting down")
                    self._waiting.clear()
                    self._post(out)
                    return
                for job in self._to_cancel:
                    if job.seq is not None:
                        engine.release(job.seq)
                    self._finish(job, out, None)
                self._to_cancel.clear()
                admit = []
                while self._waiting and len(admit) < len(engine.free):
                    job = self._waiting.popleft()
                    if not job.done:
                        admit.append(job)
            try:
                t0 = time.perf_counter()
                self._admit(admit, out)
                t1 = time.perf_counter()
                events = engine.step() if engine.live else []
                self.prefill_seconds += t1 - t0
                if events:
                    self.steps += 1
                    self.tokens += len(events)
                    self.step_seconds += time.perf_counter() - t1
            except Exception as e:  # a bug must not leave clients waiting forever
                log.exception("engine step failed")
                with self._cv:
                    for job in list(self._by_seq.values()):
                        engine.release(job.seq)
                        self._finish(job, out, f"error:generation failed ({type(e).__name__})")
                self._post(out)
                continue
            now = time.perf_counter()
            with self._cv:
                for seq, token in events:
                    job = self._by_seq.get(seq)
                    if job is None or job.done:
                        continue
                    if token is not None:
                        out.setdefault(job.ticket, []).append((job.index, token, None))
                        self._observe(job, now)
                    if seq.finished:
                        self._finish(job, out, seq.finish_reason)
            self._post(out)

    def _observe(self, job: _Job, now: float) -> None:
        if self.metrics is not None:
            gap = None if job.last_token is None else now - job.last_token
            self.metrics.token(now - job.arrived, gap)
        job.last_token = now

    def _admit(self, jobs: list[_Job], out: dict) -> None:
        """Prefill waiting prompts, several per forward pass (bounded in padded tokens)."""
        group: list[_Job] = []
        for job in [*jobs, None]:
            width = max([len(j.prompt) for j in group] + [len(job.prompt) if job else 0])
            if group and (job is None or (len(group) + 1) * width > PREFILL_TOKENS):
                self._prefill(group, out)
                group = []
            if job is not None:
                group.append(job)

    def _prefill(self, group: list[_Job], out: dict) -> None:
        try:
            seqs = self.engine.add_many([j.prompt for j in group], [j.params for j in group])
        except ChatsmithError as e:
            if len(group) > 1:  # find out which prompt is at fault; start the others
                for job in group:
                    self._prefill([job], out)
                return
            with self._cv:
                self._finish(group[0], out, f"error:{e}")
            return
        with self._cv:
            for job, seq in zip(group, seqs):
                job.seq = seq
                self._by_seq[seq] = job
                if self.metrics is not None:
                    self.metrics.admitted(len(job.prompt))

    @staticmethod
    def _post(out: dict[Ticket, list[Event]]) -> None:
        # one hop to the event loop per step, not one per token
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for ticket, events in out.items():
            by_loop.setdefault(ticket.loop, []).append((ticket, events))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop has closed: nobody is listening
                pass


def _deliver(items: list[tuple[Ticket, list[Event]]]) -> None:
    for ticket, events in items:
        ticket.events.put_nowait(events)

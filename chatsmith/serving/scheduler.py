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


class EngineDown(ChatsmithError):
    """The engine thread has died or is stuck: nothing submitted now would be answered."""


# What a failed sequence's finish reason starts with: the rest is a message for the client.
FAILED = "error:"  # this request's generation failed (500)
UNAVAILABLE = "unavailable:"  # the engine is gone (503)


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
    """One request's sequences and the events posted to it, waiting to be taken.

    A plain list and one future instead of an asyncio.Queue: the reader takes everything that
    has arrived at once (several steps' worth when it fell behind), and a wait costs one future
    and one timer, not a task per token."""

    loop: asyncio.AbstractEventLoop
    jobs: list[_Job] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)  # choice indices to stop
    _inbox: list = field(default_factory=list)
    _waiter: asyncio.Future | None = None

    def deliver(self, events: list[Event]) -> None:
        """Add events (on the ticket's event loop) and wake a waiting reader."""
        self._inbox.extend(events)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def take(self) -> list[Event]:
        """Every event that has arrived since the last take ([] if none)."""
        events, self._inbox = self._inbox, []
        return events

    async def wait(self, timeout: float) -> bool:
        """Until events arrive (True) or `timeout` seconds pass (False)."""
        if self._inbox:
            return True
        self._waiter = waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Scheduler:
    """`stall_s`: a step (prefill or decode) running longer than this counts as stuck;
    `metrics` (a serving.metrics.ServeMetrics) is told of admitted prompts and tokens."""

    def __init__(self, engine: Engine, max_queue: int, stall_s: float = 300.0, metrics=None):
        self.engine = engine
        self.metrics = metrics
        self.capacity = engine.max_batch + max_queue
        self.stall_s = stall_s
        self._cv = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._to_cancel: list[_Job] = []
        self._outstanding = 0  # sequences waiting or generating
        self._by_seq: dict[Generation, _Job] = {}
        self._closing = False
        self._died = False
        self._busy_since: float | None = None  # when the running step began
        self.steps = 0
        self.tokens = 0
        self.step_seconds = 0.0  # time inside Engine.step (decode)
        self.prefill_seconds = 0.0  # time inside Engine.add (prompt prefill)
        # CPU time the engine thread has used (its own clock, so other threads' work and time
        # spent waiting for a core are not in it); with one torch thread, all of the model's
        self.engine_cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="chatsmith-engine", daemon=True)
        self._thread.start()

    # ---- called from the event loop -------------------------------------------------------

    def problem(self) -> str | None:
        """Why the engine cannot answer now (dead or stuck thread); None when it is healthy."""
        if self._died or not (self._thread.is_alive() or self._closing):
            return "the engine thread has stopped"
        since = self._busy_since
        if since is not None and time.monotonic() - since > self.stall_s:
            return f"the engine has been stuck in one step for over {self.stall_s:g} s"
        return None

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> Ticket:
        """Queue one sequence per choice; raise QueueFull when there is no room, EngineDown
        when the engine would never answer."""
        problem = self.problem()
        if problem is not None:
            raise EngineDown(problem)
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
        """Stop some or all of a ticket's sequences. One still queued leaves the queue now (the
        engine may be busy for a while); one generating frees its slot before the next step."""
        with self._cv:
            for job in ticket.jobs:
                if (indices is None or job.index in indices) and not job.done:
                    ticket.cancelled.add(job.index)
                    if job.seq is None and job in self._waiting:
                        self._waiting.remove(job)
                        self._finish(job, {}, None)
                    else:
                        self._to_cancel.append(job)
            self._cv.notify()

    def stats(self) -> dict:
        with self._cv:
            return {
                "running": len(self._by_seq),
                "waiting": len(self._waiting),
                "slots": self.engine.max_batch,
                "slots_free": len(self.engine.free),
                "steps": self.steps,
                "tokens": self.tokens,
                "step_seconds": round(self.step_seconds, 3),
                "prefill_seconds": round(self.prefill_seconds, 3),
                "engine_cpu_seconds": round(self.engine_cpu_seconds, 3),
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

    def _fail(self, job: _Job, exc: BaseException, out: dict) -> None:
        """One sequence's forward pass failed: log it once, answer it, free its slot."""
        log.error("generation failed for one request: %r", exc, exc_info=exc)
        with self._cv:
            if job.seq is not None:
                self.engine.release(job.seq)
            self._finish(job, out, f"{FAILED}generation failed ({type(exc).__name__})")

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # whatever killed it, nobody may be left waiting on it
            log.critical("the engine thread died: %r", e, exc_info=e)
            out: dict[Ticket, list[Event]] = {}
            with self._cv:
                self._died = True
                self._abandon(out, f"{UNAVAILABLE}the engine thread has stopped")
            self._post(out)

    def _abandon(self, out: dict, reason: str) -> None:
        """Answer every waiting and running sequence with `reason` (lock held)."""
        for job in [*self._waiting, *self._by_seq.values()]:
            self._finish(job, out, reason)
        self._waiting.clear()

    def _loop(self) -> None:
        engine = self.engine
        while True:
            out: dict[Ticket, list[Event]] = {}
            with self._cv:
                while not (
                    self._to_cancel
                    or engine.live
                    or self._closing
                    or (self._waiting and engine.free)
                ):
                    self._cv.wait()
                if self._closing:
                    self._abandon(out, f"{UNAVAILABLE}the server is shutting down")
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
                self._busy_since = time.monotonic()
            try:
                t0 = time.perf_counter()
                self._admit(admit, out)
                t1 = time.perf_counter()
                events = self._step(out) if engine.live else []
                self.prefill_seconds += t1 - t0
                if events:
                    self.steps += 1
                    self.tokens += len(events)
                    self.step_seconds += time.perf_counter() - t1
            except Exception as e:  # a bug here must not leave clients waiting forever
                log.exception("engine step failed")
                with self._cv:
                    for job in list(self._by_seq.values()):
                        engine.release(job.seq)
                        self._finish(job, out, f"{FAILED}generation failed ({type(e).__name__})")
                self._post(out)
                continue
            finally:
                self._busy_since = None
                self.engine_cpu_seconds = time.thread_time()
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

    def _step(self, out: dict) -> list:
        """One decode step for everyone. If the batched pass fails, each sequence is retried
        alone, so that only the one(s) at fault fail and the others go on."""
        try:
            return self.engine.step()
        except Exception as e:
            failed, first = list(self.engine.live), e
        if len(failed) == 1:
            self._fail(self._by_seq[failed[0]], first, out)
            return []
        events = []
        for seq in failed:
            try:
                events += self.engine.step([seq])
            except Exception as e:
                self._fail(self._by_seq[seq], e, out)
        return events

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
        except Exception as e:
            if len(group) > 1:  # find out which prompt is at fault; start the others
                for job in group:
                    self._prefill([job], out)
                return
            if isinstance(e, ChatsmithError):  # a prompt the engine refuses (checked earlier)
                with self._cv:
                    self._finish(group[0], out, f"{FAILED}{e}")
            else:
                self._fail(group[0], e, out)
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
        ticket.deliver(events)

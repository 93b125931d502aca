"""The server's state around the scheduler: request -> prompt and sampling, tokens -> text.

`Server` holds what every route shares (the loaded run, its engine, the limits, the API key)
and owns the `Scheduler`'s lifetime. `ChoiceText` turns one choice's tokens into text cut at
the request's stop strings, through the same `StopFilter` the chat session uses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from chatsmith.chat_template import render_prompt, validate_messages
from chatsmith.checkpoint import RUN_FILE
from chatsmith.errors import ChatsmithError
from chatsmith.inference.completion import completion_prompt
from chatsmith.inference.embeddings import embedding_ids
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.loading import LoadedRun
from chatsmith.inference.streaming import StopFilter, TextStream
from chatsmith.serving.config import ServeLimits
from chatsmith.serving.embeddings import EmbeddingBatcher
from chatsmith.serving.errors import APIError
from chatsmith.serving.metrics import ServeMetrics
from chatsmith.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingRequest,
)
from chatsmith.serving.scheduler import (
    FAILED,
    UNAVAILABLE,
    EngineDown,
    QueueFull,
    Scheduler,
    Ticket,
)
from chatsmith.tokenizer import Tokenizer

# how often a request waiting for tokens checks that the engine is still alive
HEALTH_POLL_S = 1.0


def run_created(run_dir: Path) -> int:
    """When the run was made, as Unix seconds: its run.json is written once, when it starts."""
    return int((Path(run_dir) / RUN_FILE).stat().st_mtime)


class ChoiceText:
    """One choice's token ids -> text, ended at the first of the request's stop strings."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.stream, self.filter = TextStream(tokenizer), StopFilter(stops)
        self.text = ""
        self.tokens = 0
        self.finish: str | None = None

    def push(self, token: int) -> str:
        self.tokens += 1
        return self._add(self.filter.push(self.stream.push(token)))

    def end(self, reason: str) -> str:
        piece = self._add(self.filter.push(self.stream.flush()) + self.filter.flush())
        self.finish = self.finish or reason
        return piece

    def _add(self, piece: str) -> str:
        if self.filter.stopped:
            self.finish = "stop"
        self.text += piece
        return piece


class Server:
    """State shared by the request handlers: model, tokenizer, limits and the scheduler."""

    def __init__(
        self,
        loaded: LoadedRun,
        limits: ServeLimits,
        api_key: str | None,
        compile_step: bool = False,
    ):
        limits.validate()
        if api_key is not None and not api_key.strip():
            # a blank key would let a bare "Authorization: Bearer" in
            raise ChatsmithError("the API key is empty: give a real key, or none for no auth")
        self.limits, self.api_key = limits, api_key
        self.loaded, self.tok = loaded, loaded.tokenizer
        self.model_id = loaded.name
        self.created = run_created(loaded.path)
        self.context = loaded.cfg.max_seq_len
        # no token spans more bytes than the longest in the vocabulary (nor more characters),
        # so a text longer than this cannot fit the context: refused before tokenizing it
        self.max_prompt_chars = self.context * max(self.tok.bytes_per_token)
        self.arch, self.model, self.width = loaded.cfg.arch, loaded.model, loaded.cfg.d_model
        self.vocab_size = loaded.cfg.vocab_size
        self.engine: Engine | None = None
        if self.arch != "encoder":  # an encoder embeds; it has no engine to generate with
            # every special token ends a reply: a marker can never show up as reply text; so do
            # the template's stop ids (an imported model's may be ordinary tokens)
            self.engine = Engine(
                loaded.model,
                stop_ids=sorted(self.tok.special_ids | set(self.tok.stop_ids)),
                max_batch=limits.max_batch,
                cuda_graph=True,
                start_id=self.tok.bos_id,
                compile=compile_step,
            )
        self.scheduler: Scheduler | None = None
        self.embedder: EmbeddingBatcher | None = None
        self.metrics = ServeMetrics(self.stats)

    def start(self) -> None:
        if self.engine is not None and self.scheduler is None:
            self.scheduler = Scheduler(
                self.engine, self.limits.max_queue, self.limits.engine_stall_s, self.metrics
            )
        if self.engine is None and self.embedder is None:
            self.embedder = EmbeddingBatcher(
                self.model, self.limits.max_batch, self.limits.max_queue
            )

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None

    def stats(self) -> dict:
        """The scheduler's (or embedder's) counters and queue ({} while stopped)."""
        worker = self.scheduler or self.embedder
        return worker.stats() if worker is not None else {}

    def model_card(self) -> dict:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "chatsmith",
            "context_length": self.context,
        }

    # ---- request -> prompt and sampling -----------------------------------------------------

    # prompts are tokenized on a worker thread (`run_in_threadpool` in the routes): a long one
    # must not stall the event loop and with it every stream in flight

    def _generative(self) -> None:
        if self.engine is None:
            raise APIError(
                400,
                f"{self.model_id} is an encoder model: it serves /v1/embeddings, not completions",
                param="model",
                code="model_not_supported",
            )

    def chat_prompt(self, body: ChatCompletionRequest) -> list[int]:
        self._generative()
        try:
            self.loaded.check_chat()
        except ChatsmithError as e:
            raise APIError(400, str(e), param="messages", code="model_cannot_chat") from None
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        self._check_chars(sum(len(m["content"]) for m in messages), "messages")
        try:
            messages = validate_messages(messages, where="messages")
        except ChatsmithError as e:
            raise APIError(400, str(e), param="messages") from None
        if self.engine.seq2seq:  # an encoder-decoder replies to the last message
            ids = self.tok.encode(messages[-1]["content"])
        else:
            ids = render_prompt(self.tok, messages)
        self._check_length(ids, "messages")
        return ids

    def text_prompts(self, body: CompletionRequest) -> list[list[int]]:
        """One prompt per text; with `suffix`, fill-in-the-middle prompts (not cut to fit: a
        prompt too long for the context is refused, as without a suffix)."""
        self._generative()
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        params = ["prompt"] if len(texts) == 1 else [f"prompt[{i}]" for i in range(len(texts))]
        for text, param in zip(texts, params):
            self._check_chars(len(text) + len(body.suffix or ""), param)
        if self.engine.seq2seq:  # the source text is the whole prompt: nothing to fill in
            if body.suffix:
                raise APIError(
                    400, f"{self.model_id} is an encoder-decoder model: no suffix", param="suffix"
                )
            prompts = [self.tok.encode(t) for t in texts]
        else:
            try:
                prompts = [completion_prompt(self.tok, t, body.suffix, 2**62) for t in texts]
            except ChatsmithError as e:
                raise APIError(400, str(e), param="suffix") from None
        for ids, param in zip(prompts, params):
            self._check_length(ids, param)
        return prompts

    def _check_chars(self, chars: int, param: str) -> None:
        if chars > self.max_prompt_chars:
            raise APIError(
                400,
                f"the prompt has {chars} characters, more than this model's context of "
                f"{self.context} tokens can hold: shorten it",
                param=param,
                code="context_length_exceeded",
            )

    def embedding_inputs(self, body: EmbeddingRequest) -> list[list[int]]:
        """Token ids of every input (text as `chatsmith embed` reads it; ids as given)."""
        if self.engine is not None:
            raise APIError(
                400,
                f"{self.model_id} is a {self.arch} model: it generates text; embeddings come "
                "from an encoder run (chatsmith pretrain --arch encoder, or an imported BERT)",
                param="model",
                code="model_not_supported",
            )
        if body.dimensions is not None and body.dimensions != self.width:
            raise APIError(
                400,
                f"this model's embeddings have {self.width} dimensions; dimensions must be "
                f"{self.width} or left out",
                param="dimensions",
            )
        raw = body.input
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        seqs = []
        for i, item in enumerate(raw):
            param = "input" if len(raw) == 1 else f"input[{i}]"
            if isinstance(item, str):
                self._check_chars(len(item), param)
                ids = embedding_ids(self.tok, item)
            else:
                ids = list(item)
                if max(ids) >= self.vocab_size:
                    raise APIError(
                        400,
                        f"{param}: token id {max(ids)} is outside the vocabulary "
                        f"(0-{self.vocab_size - 1})",
                        param=param,
                    )
            if len(ids) > self.context:
                raise APIError(
                    400,
                    f"{param} has {len(ids)} tokens; this model reads at most {self.context}",
                    param=param,
                    code="context_length_exceeded",
                )
            seqs.append(ids)
        return seqs

    async def embed(self, seqs: list[list[int]]):
        """The (len(seqs), d) embeddings, computed with whatever other requests are waiting."""
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        if self.embedder is None:
            raise self.unavailable("the server is not running")
        try:
            future = self.embedder.submit(seqs)
        except QueueFull as e:
            raise APIError(
                429, str(e), "rate_limit_exceeded", code="queue_full", headers=retry
            ) from None
        return await future

    def _check_length(self, ids: list[int], param: str) -> None:
        if self.engine is not None and self.engine.seq2seq and 0 < len(ids) <= self.context:
            return  # an encoder-decoder reads the whole context and writes on its own side
        if len(ids) >= self.context:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; this model's context is {self.context} "
                "tokens, which leaves no room for a reply: shorten it",
                param=param,
                code="context_length_exceeded",
            )

    def sampling(self, req: SamplingRequest, max_tokens: int | None) -> list[SamplingParams]:
        """One SamplingParams per choice (`n`); choice i samples with seed + i."""
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
        return [
            SamplingParams(
                max_tokens=max_tokens or min(lim.default_max_tokens, lim.max_tokens),
                temperature=temperature,
                top_p=top_p,
                top_k=req.top_k,
                seed=None if req.seed is None else (req.seed + i) % 2**64,
            )
            for i in range(n)
        ]

    # ---- the scheduler -----------------------------------------------------------------------

    def problem(self) -> str | None:
        """Why requests cannot be answered now; None when the server is healthy."""
        if self.embedder is not None:  # an encoder run: embeddings have no engine thread
            return None
        if self.scheduler is None:
            return "the server is not running"
        return self.scheduler.problem()

    def unavailable(self, message: str) -> APIError:
        retry = {"Retry-After": str(self.limits.retry_after_s)}
        return APIError(503, message, "server_error", code="engine_unavailable", headers=retry)

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> Ticket:
        if self.scheduler is None:
            raise self.unavailable("the server is not running")
        try:
            return self.scheduler.submit(prompts, params)
        except EngineDown as e:
            raise self.unavailable(str(e)) from None
        except QueueFull as e:
            retry = {"Retry-After": str(self.limits.retry_after_s)}
            raise APIError(
                429, str(e), "rate_limit_exceeded", code="queue_full", headers=retry
            ) from None

    def cancel(self, ticket: Ticket, indices: list[int] | None = None) -> None:
        if self.scheduler is not None:
            self.scheduler.cancel(ticket, indices)

    async def pieces(
        self, ticket: Ticket, stops: list[str]
    ) -> AsyncIterator[list[tuple[int, str, str | None, ChoiceText]]]:
        """(choice index, new text, finish reason if this ended it, state) as tokens arrive,
        until every choice has finished: a list per wake-up, holding whatever arrived meanwhile
        (one step's, or several when the reader fell behind), so that a stream can send it as
        one write."""
        states = [ChoiceText(self.tok, stops) for _ in ticket.jobs]
        remaining = len(states)
        while remaining:
            out = []
            for idx, token, reason in await self._next_events(ticket):
                st = states[idx]
                if st.finish is not None:
                    continue
                if reason is not None and reason.startswith(FAILED):
                    raise APIError(500, reason[len(FAILED) :], "server_error")
                if reason is not None and reason.startswith(UNAVAILABLE):
                    raise self.unavailable(reason[len(UNAVAILABLE) :])
                piece = "" if token is None else st.push(token)
                if st.finish is not None:  # a stop string: free the slot now
                    self.cancel(ticket, [idx])
                elif reason is not None:
                    piece += st.end(reason)
                if piece or st.finish is not None:
                    out.append((idx, piece, st.finish, st))
                if st.finish is not None:
                    remaining -= 1
            if out:
                yield out

    async def _next_events(self, ticket: Ticket) -> list:
        """The ticket's events so far (waiting for at least one); a 503 if the engine dies or
        gets stuck meanwhile."""
        while not await ticket.wait(HEALTH_POLL_S):
            problem = self.problem()
            if problem is not None:
                raise self.unavailable(problem)
        return ticket.take()

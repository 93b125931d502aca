"""The inference engine shared by the CLI, the server, RL sampling and evaluation.

Sequences live in rows ("slots") of one static KV cache. `add` prefills a prompt into a free
slot; `step` runs one batched decode step for every live sequence; finished sequences leave
and free their slot at once. That is continuous batching: requests join and leave between
steps, and one request alone is just the batch-of-one case of the same code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from chatsmith.data.batching import pad_right
from chatsmith.errors import ChatsmithError
from chatsmith.inference.static_decode import StaticDecodeStep


class ContextOverflow(ChatsmithError):
    """The prompt leaves no room in the model's context for even one new token."""


class EngineFull(ChatsmithError):
    """Every slot is in use."""


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise ChatsmithError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ChatsmithError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ChatsmithError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ChatsmithError(f"top_k must be at least 1, got {self.top_k}")


def sample_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
    greedy: torch.Tensor | None = None,
) -> list[int]:
    """Batched sampling for (B, V) logits, one row per sequence, each with its own settings;
    `greedy`: the rows' argmax when the decode step already computed it.

    The filtering is done for many rows at once (per-row sampling was a large share of a decode
    step at batch 16+). Each row draws one uniform number from its own generator and rows are
    grouped by whether they filter, so a seeded sequence's tokens do not depend on which other
    sequences share the batch.
    """
    vocab = logits.shape[-1]
    greedy_rows, plain, filtered = [], [], []
    for i, p in enumerate(params):
        if p.temperature == 0:
            greedy_rows.append(i)
        else:
            narrow = (p.top_k is not None and p.top_k < vocab) or p.top_p < 1.0
            (filtered if narrow else plain).append(i)
    out = [0] * len(params)
    if greedy_rows:
        if greedy is None:
            greedy = _rows(logits, greedy_rows).argmax(-1)
        elif len(greedy_rows) < len(params):
            greedy = greedy[greedy_rows]
        for i, t in zip(greedy_rows, greedy.tolist()):
            out[i] = t
    for rows, sample in ((plain, _sample_plain), (filtered, _sample_filtered)):
        if rows:
            picks = sample(
                _rows(logits, rows).float().cpu(),
                [params[i] for i in rows],
                [generators[i] for i in rows],
            )
            for i, t in zip(rows, picks):
                out[i] = t
    return out


_FLOAT32_MAX = torch.finfo(torch.float32).max


def _rows(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    # every row in order (the usual case): no copy of the (B, V) logits
    return logits if len(rows) == logits.shape[0] else logits[rows]


def _scaled(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Logits divided by each row's temperature. A temperature so small that the division
    overflows (1e-45, or 1e-300 which float32 holds as 0) means its limit, greedy: only the
    likeliest tokens stay, instead of NaN from inf-inf."""
    temps = [p.temperature for p in params]
    x = logits / torch.tensor(temps)[:, None]
    # the largest magnitude per row, not a finiteness test of every element (abs + amax is
    # ~10x faster here than aminmax, which is not vectorised along a dimension on CPU)
    big = logits.abs().amax(dim=-1).tolist()
    # `not <=` also catches NaN and inf logits
    overflow = [j for j, (b, t) in enumerate(zip(big, temps)) if not b / t <= _FLOAT32_MAX]
    if overflow:
        top = logits[overflow]
        x[overflow] = torch.where(top == top.max(-1, keepdim=True).values, 0.0, float("-inf"))
    return x


def _uniforms(generators: list[torch.Generator | None]) -> torch.Tensor:
    u = torch.empty(len(generators))
    unseeded = [j for j, g in enumerate(generators) if g is None]
    if unseeded:
        u[unseeded] = torch.rand(len(unseeded))
    for j, g in enumerate(generators):
        if g is not None:
            u[j] = torch.rand(1, generator=g)
    return u


def _pick(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """Inverse-CDF draw of one column per row of unnormalised `probs`, one uniform per row."""
    cdf = probs.cumsum(-1)
    u = _uniforms(generators)
    picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
    return picks.clamp_(max=probs.shape[-1] - 1)[:, 0]


def _sample_plain(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """Sampling from the whole vocabulary at each row's temperature."""
    probs = torch.softmax(_scaled(logits, params), dim=-1)
    return _pick(probs, generators).tolist()


def _sample_filtered(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """Sampling after top-k, then top-p (nucleus) filtering.

    Only the likeliest candidates are ranked (`topk`), not the whole vocabulary: sorting
    (16, 8192) logits took ~8 ms on a CPU, longer than the decode step. A row with top_k
    needs its k likeliest; a top-p-only row needs its nucleus, which at the usual settings
    lies among the likeliest 64 (checked: their mass reaches top_p); a row whose nucleus is
    wider sorts all its probabilities' values instead.
    """
    vocab = logits.shape[-1]
    x = _scaled(logits, params)
    ks = [min(p.top_k or vocab, vocab) for p in params]
    count = min(vocab, max([64] + [k for k in ks if k < vocab]))
    top_p = torch.tensor([p.top_p for p in params])
    probs, order, short = _ranked_nucleus(x, torch.tensor(ks), top_p, count)
    # each row draws exactly once: among its ranked candidates, or from its wide nucleus
    picks = [0] * len(params)
    ranked = [j for j in range(len(params)) if j not in short]
    if ranked:
        draws = _pick(_rows(probs, ranked), [generators[j] for j in ranked])
        for j, t in zip(ranked, _rows(order, ranked).gather(1, draws[:, None])[:, 0].tolist()):
            picks[j] = t
    if short:
        wide = _pick_wide_nucleus(x[short], top_p[short], [generators[j] for j in short])
        for j, t in zip(short, wide):
            picks[j] = t
    return picks


def _pick_wide_nucleus(
    x: torch.Tensor, top_p: torch.Tensor, generators: list[torch.Generator | None]
) -> list[int]:
    """Draws from each row's nucleus when it is wide: every token at least as likely as the
    nucleus's least likely member, whose probability is read from the sorted probabilities.
    The sort is numpy's, of values only (SIMD; ~4x faster than `torch.sort` here, which also
    orders the indices)."""
    probs = torch.softmax(x, dim=-1)
    ranked = np.sort(probs.numpy(), axis=-1)[:, ::-1]
    before = np.cumsum(ranked, axis=-1) - ranked  # the mass of the likelier tokens
    size = (before < top_p.numpy()[:, None]).sum(-1).clip(min=1)
    least = torch.from_numpy(ranked[np.arange(len(size)), size - 1].copy())
    return _pick(probs.masked_fill(probs < least[:, None], 0.0), generators).tolist()


def _ranked_nucleus(
    x: torch.Tensor, ks: torch.Tensor, top_p: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Each row's `count` likeliest of the scaled logits `x` with their filtered probabilities
    (unnormalised; top-k and top-p applied), their token ids, and the rows whose nucleus may
    reach beyond them (their probabilities are not valid)."""
    capped = ks < x.shape[-1]
    values, order = x.topk(count, dim=-1)
    values = values.masked_fill(torch.arange(count)[None, :] >= ks[:, None], float("-inf"))
    # a top-k row renormalises over its k candidates; a top-p-only row over the vocabulary
    norm = torch.logsumexp(values, dim=-1)
    if not capped.all():
        norm = torch.where(capped, norm, torch.logsumexp(x, dim=-1))
    probs = torch.exp(values - norm[:, None])
    mass = probs.cumsum(-1)
    # the nucleus (the likeliest tokens whose preceding mass is below top_p) lies among the
    # ranked ones when their mass reaches top_p
    short = (~capped & (mass[:, -1] < top_p)).nonzero()[:, 0].tolist()
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    drop = mass - probs >= top_p[:, None]
    drop[:, 0] = False  # even when top_p underflows to 0 (1e-300 in float32)
    return probs.masked_fill(drop, 0.0), order, short


@dataclass(eq=False)
class Generation:
    """One sequence being generated. `tokens` holds the generated ids (stop token excluded);
    `stop_token` is the stop token that ended it, when one did (RL trains on it too)."""

    prompt: list[int]
    params: SamplingParams
    slot: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (stop token), "length" (max_tokens or context)
    stop_token: int | None = None
    _next_logits: torch.Tensor | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class Engine:
    def __init__(
        self,
        model: nn.Module,
        stop_ids: Sequence[int],
        max_batch: int = 1,
        dtype: torch.dtype | None = None,
        cuda_graph: bool = False,
        start_id: int | None = None,
        compile: bool = False,
    ):
        """`cuda_graph=True` (CUDA only) records the decode step once and replays it, which
        removes kernel-launch overhead; worth it for an engine that lives long (CLI, server).
        `compile=True` (CPU or CUDA) runs the decode step through torch.compile: several times
        faster per token for small models, at a one-off compile of tens of seconds on a small
        CPU; on CUDA with `cuda_graph` the compiled step is what gets recorded. Either way the
        step covers every slot with fixed shapes (see `StaticDecodeStep`).

        An encoder-decoder model takes the prompt as its source: `add` encodes it once into the
        slot's cache and decoding starts from `start_id`; the rest is the same as decoder-only.
        """
        self.model = model.eval()
        self.cfg = model.cfg
        if self.cfg.arch == "encoder":
            raise ChatsmithError("an encoder model embeds text; it cannot generate")
        self.seq2seq = self.cfg.arch == "encoder_decoder"
        if self.seq2seq and start_id is None:
            raise ChatsmithError("an encoder-decoder engine needs the decoder's start token")
        self.start_id = start_id
        self.device = next(model.parameters()).device
        self.dtype = dtype or next(model.parameters()).dtype
        self.stop_ids = frozenset(stop_ids)
        self.max_batch = max_batch
        self.cache = model.new_cache(max_batch, self.device, self.dtype)
        self.free: list[int] = list(range(max_batch - 1, -1, -1))
        self.live: list[Generation] = []
        self.static = None
        graph = cuda_graph and self.device.type == "cuda"
        if graph or compile:
            self.static = StaticDecodeStep(self.model, self.cache, graph, compile=compile)

    @property
    def context(self) -> int:
        return self.cfg.max_seq_len

    def has_free_slot(self) -> bool:
        return bool(self.free)

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        params.validate()
        if not prompt:
            raise ChatsmithError("the prompt is empty")
        if self.seq2seq and len(prompt) > self.context:
            raise ContextOverflow(
                f"the source has {len(prompt)} tokens; the model reads at most {self.context}"
            )
        if not self.seq2seq and len(prompt) >= self.context:
            raise ContextOverflow(
                f"the prompt has {len(prompt)} tokens; the model's context is {self.context}, "
                "which leaves no room for a reply"
            )

    @torch.inference_mode()
    def add(self, prompt: list[int], params: SamplingParams) -> Generation:
        """Prefill `prompt` into a free slot; its first token comes out of the next `step`."""
        self._check(prompt, params)
        if not self.free:
            raise EngineFull(f"all {self.max_batch} generation slots are busy")
        slot = self.free.pop()
        gen = None
        if params.seed is not None:
            gen = torch.Generator().manual_seed(params.seed)
        seq = Generation(list(prompt), params, slot, gen)
        try:
            self.cache.reset(torch.tensor([slot], device=self.device))
            x = torch.tensor([prompt], dtype=torch.long, device=self.device)
            rows = torch.tensor([slot], device=self.device)
            if self.seq2seq:  # the encoder runs once per request; the decoder starts afresh
                self.model.encode_into(self.cache, rows, x)
                x = torch.tensor([[self.start_id]], dtype=torch.long, device=self.device)
            logits, _ = self.model(x, cache=self.cache, rows=rows, last_only=True)
        except BaseException:  # out of memory, say: the slot must not be lost with it
            self.free.append(slot)
            raise
        seq._next_logits = logits[0, -1]
        self.live.append(seq)
        return seq

    @torch.inference_mode()
    def add_many(
        self, prompts: Sequence[list[int]], params: Sequence[SamplingParams]
    ) -> list[Generation]:
        """Prefill several prompts in one forward pass (each into its own free slot).

        Same result as calling `add` for each, with one model call instead of many: prompts are
        right-padded to the longest, and each row's cache length is then set back to its own
        prompt, so the padding's keys are never attended to and get overwritten by decoding.
        """
        if len(prompts) != len(params):
            raise ChatsmithError("add_many needs one SamplingParams per prompt")
        for prompt, p in zip(prompts, params):
            self._check(prompt, p)
        if len(prompts) > len(self.free):
            raise EngineFull(f"{len(prompts)} prompts but {len(self.free)} free slots")
        if len(prompts) <= 1 or self.seq2seq:
            return [self.add(pr, p) for pr, p in zip(prompts, params)]
        slots = [self.free.pop() for _ in prompts]
        try:
            lengths = torch.tensor([len(pr) for pr in prompts], device=self.device)
            x = pad_right(prompts, 0).to(self.device)
            rows = torch.tensor(slots, device=self.device)
            self.cache.reset(rows)
            logits, _ = self.model(x, cache=self.cache, rows=rows)
            self.cache.lengths[rows] = lengths
            last = logits[torch.arange(len(prompts), device=self.device), lengths - 1]
        except BaseException:
            self.free.extend(reversed(slots))
            raise
        seqs = []
        for prompt, p, slot, row in zip(prompts, params, slots, last):
            gen = None if p.seed is None else torch.Generator().manual_seed(p.seed)
            seq = Generation(list(prompt), p, slot, gen)
            seq._next_logits = row
            self.live.append(seq)
            seqs.append(seq)
        return seqs

    @torch.inference_mode()
    def add_group(self, prompt: list[int], params: Sequence[SamplingParams]) -> list[Generation]:
        """Start len(params) replies to one prompt with a single prefill.

        The prompt is prefilled into one slot, whose keys and values are then copied into the
        others, so a group of G samples (RL, pass@k) costs one prefill instead of G; each
        reply keeps its own sampling settings and generator, hence the same tokens as if it
        had been added alone.
        """
        if self.seq2seq or len(params) <= 1:
            return [self.add(prompt, p) for p in params]
        if len(params) > len(self.free):
            raise EngineFull(f"a group of {len(params)} but {len(self.free)} free slots")
        for p in params[1:]:
            p.validate()
        first = self.add(prompt, params[0])
        slots = [self.free.pop() for _ in params[1:]]
        self.cache.copy_row(first.slot, torch.tensor(slots, device=self.device))
        seqs = [first]
        for p, slot in zip(params[1:], slots):
            gen = None if p.seed is None else torch.Generator().manual_seed(p.seed)
            seq = Generation(list(prompt), p, slot, gen)
            seq._next_logits = first._next_logits
            self.live.append(seq)
            seqs.append(seq)
        return seqs

    def _accept(self, seq: Generation, token: int) -> bool:
        """Record a sampled token; return True if it is to be shown to the caller."""
        if token in self.stop_ids:
            seq.finish_reason, seq.stop_token = "stop", token
            return False
        seq.tokens.append(token)
        # positions the decoder has used: an encoder-decoder's prompt sits in the encoder
        used = len(seq.tokens) + (1 if self.seq2seq else len(seq.prompt))
        if len(seq.tokens) >= seq.params.max_tokens or used >= self.context:
            seq.finish_reason = "length"
        return True

    @torch.inference_mode()
    def step(self, only: Sequence[Generation] | None = None) -> list[tuple[Generation, int | None]]:
        """Advance every live sequence (or the live ones among `only`) by one token.

        Returns (sequence, token) pairs; token is None when the sequence stopped on a stop
        token. Sequences that finish are removed and their slots freed before returning. If
        the forward pass raises, no sequence has moved (the cache lengths are set back), so
        the step can be retried for fewer of them.
        """
        live = list(self.live) if only is None else [s for s in only if s in self.live]
        decode = [s for s in live if s._next_logits is None]
        ready = [s for s in live if s._next_logits is not None]  # prefilled, not yet sampled
        logits = greedy = None
        if decode:
            lengths = self.cache.lengths.clone()  # (max_batch,)
            try:
                logits, greedy = self._decode(decode)
            except BaseException:  # the lengths may have advanced before the pass failed
                self.cache.lengths.copy_(lengths)
                raise
        if ready:
            # one batch for sampling; the decoded rows are not split apart and stacked again
            # (that copy was ~0.1 ms of a batch-16 CPU step)
            fresh = torch.stack([s._next_logits for s in ready])
            logits = fresh if logits is None else torch.cat([logits, fresh])
            greedy = None
        if not live:
            return []
        order = decode + ready
        tokens = sample_tokens(
            logits, [s.params for s in order], [s.generator for s in order], greedy=greedy
        )
        picked = dict(zip(order, tokens))
        events: list[tuple[Generation, int | None]] = []
        for s in live:
            token = picked[s]
            s._next_logits = None
            events.append((s, token if self._accept(s, token) else None))
            if s.finished:
                self.release(s)
        return events

    def _decode(self, seqs: list[Generation]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, V) next-token logits for sequences whose last token is not yet in the cache, and
        their greedy tokens when the step computed them."""
        if self.static is not None:
            needed = max(len(s.tokens) + (1 if self.seq2seq else len(s.prompt)) for s in seqs)
            return self.static([s.slot for s in seqs], [s.tokens[-1] for s in seqs], needed)
        x = torch.tensor([[s.tokens[-1]] for s in seqs], dtype=torch.long, device=self.device)
        rows = torch.tensor([s.slot for s in seqs], device=self.device)
        return self.model(x, cache=self.cache, rows=rows, last_only=True)[0][:, -1], None

    def release(self, seq: Generation) -> None:
        """Free a sequence's slot (finished, or abandoned by its client)."""
        if seq in self.live:
            self.live.remove(seq)
            self.free.append(seq.slot)
            if seq.finish_reason is None:
                seq.finish_reason = "cancelled"

    def generate(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        """Stream the tokens of one reply."""
        seq = self.add(prompt, params)
        try:
            while not seq.finished:
                for s, token in self.step():
                    if s is seq and token is not None:
                        yield token
        finally:
            self.release(seq)

    def generate_many(
        self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
    ) -> list[Generation]:
        """Generate a reply for every prompt, decoding up to `max_batch` of them together."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        pending = list(range(len(prompts)))[::-1]
        results: list[Generation | None] = [None] * len(prompts)
        while pending or self.live:
            while pending and self.free:
                i = pending.pop()
                results[i] = self.add(prompts[i], plist[i])
            self.step()
        return results  # type: ignore[return-value]

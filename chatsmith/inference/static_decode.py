"""One decode step over every row of the KV cache at once, with fixed shapes.

Decoding one token is a few hundred small operations; at small batch their dispatch and launch
costs, not the arithmetic, set the speed. With fixed shapes and no host synchronisation the
step can be compiled once by torch.compile (Inductor fuses the norms, rotary, SiLU and cache
writes into a few kernels: C++ on CPU, Triton on CUDA) and, on CUDA, recorded as a CUDA graph
and replayed with a single launch (the approach gpt-fast takes; here the graph is captured
directly, around the compiled step when both are asked for). The model itself is untouched:
the speed work wraps its forward. Rows not being decoded this step compute garbage that is
never read, and their cache length is put back.

A step not recorded as a graph reads only as much of the cache as the longest live row needs:
attending over the whole context for every row was, beside the matmuls, the largest cost of a
compiled batch-16 step on CPU (its time grew linearly with the positions read). The compiled
step takes that length as a symbolic size, so one graph serves every length. (A CUDA graph is
recorded once, so it keeps the full length.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from chatsmith.models import KVCache


class StaticDecodeStep:
    """The engine's decode step with fixed shapes, optionally replayed as a CUDA graph."""

    def __init__(self, model: nn.Module, cache: KVCache, use_graph: bool, compile: bool = False):
        """`compile`: run the step through torch.compile (one graph for every step). The first
        call compiles (tens of seconds on a small CPU; Inductor caches the result on disk)."""
        self.model, self.cache = model, cache
        self._forward = self._run
        if compile:
            # on CPU the fused attention kernel is slow for one query per row (it was most of a
            # compiled batch-16 step); the math form compiles to loops that Inductor fuses
            step = self._run_math if cache.lengths.device.type == "cpu" else self._run
            # dynamic=None: the read length, the one input that changes, turns symbolic at its
            # second value (one recompile); every tensor shape is marked static below
            self._forward = torch.compile(step, dynamic=None, fullgraph=True)
        batch, device = cache.lengths.numel(), cache.lengths.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.active = torch.zeros(batch, dtype=torch.bool, device=device)
        if compile:
            # only the read length may vary between calls: another engine's batch size must
            # get its own specialised graph, not turn this one's shapes symbolic
            for t in (*cache.k, *cache.v, cache.lengths, self.tokens, self.active):
                torch._dynamo.mark_static(t)
        self.logits: torch.Tensor | None = None
        self.greedy: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        if use_graph:
            self._capture()

    def _run(self, span: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        saved = self.cache.lengths.clone()
        # set inside the compiled code so that it is traced (symbolic); the caller resets it
        self.cache.read_span = span
        logits, _ = self.model(self.tokens, cache=self.cache, rows=None, last_only=True)
        self.cache.lengths.copy_(torch.where(self.active, self.cache.lengths, saved))
        logits = logits[:, -1]
        # the greedy pick inside the step: fused into the compiled code (a separate argmax over
        # (16, 8192) logits cost ~0.1 ms of a ~3 ms CPU step) and, in a graph, no extra launch
        return logits, logits.argmax(-1)

    def _run_math(self, span: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with sdpa_kernel(SDPBackend.MATH):
            return self._run(span)

    @torch.inference_mode()
    def _capture(self) -> None:
        # warm up on a side stream (lazy init, autotuning), as CUDA graph capture requires;
        # with no row active, the warm-up leaves every cache length as it was
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits, self.greedy = self._forward()

    @torch.inference_mode()
    def __call__(
        self, slots: list[int], tokens: list[int], needed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (len(slots), V) for feeding `tokens[i]` to the sequence in `slots[i]`, and
        each row's greedy token (len(slots),); `needed`: the most cache positions any of those
        sequences holds after this step."""
        device = self.tokens.device
        idx = torch.tensor(slots, device=device)
        self.tokens.zero_()
        self.active.zero_()
        self.tokens[idx, 0] = torch.tensor(tokens, device=device)
        self.active[idx] = True
        if self.graph is not None:  # recorded once over the whole cache: `needed` is moot
            self.graph.replay()
            logits, greedy = self.logits, self.greedy
        else:
            try:
                logits, greedy = self._forward(needed)
            finally:
                self.cache.read_span = None
            if slots == list(range(logits.shape[0])):
                # every slot in order: the step's own fresh output is the answer
                return logits, greedy
        # index_select, not logits[idx]: the advanced-indexing copy of (16, 8192) logits took
        # ~5x as long on CPU
        return logits.index_select(0, idx), greedy.index_select(0, idx)

"""One decode step over every row of the KV cache at once, with fixed shapes.

Decoding one token is a few hundred small operations; at small batch their dispatch and launch
costs, not the arithmetic, set the speed. With fixed shapes and no host synchronisation the
step can be compiled once by torch.compile (Inductor fuses the norms, rotary, SiLU and cache
writes into a few kernels: C++ on CPU, Triton on CUDA) and, on CUDA, recorded as a CUDA graph
and replayed with a single launch (the approach gpt-fast takes; here the graph is captured
directly, around the compiled step when both are asked for). The model itself is untouched:
the speed work wraps its forward. Rows not being decoded this step compute garbage that is
never read, and their cache length is put back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from chatsmith.models import KVCache


class StaticDecodeStep:
    """The engine's decode step with fixed shapes, optionally replayed as a CUDA graph."""

    def __init__(self, model: nn.Module, cache: KVCache, use_graph: bool, compile: bool = False):
        """`compile`: run the step through torch.compile (fixed shapes, one graph). The first
        call compiles (tens of seconds on a small CPU; Inductor caches the result on disk)."""
        self.model, self.cache = model, cache
        self._forward = self._run
        if compile:
            # on CPU the fused attention kernel is slow for one query per row (it was most of a
            # compiled batch-16 step); the math form compiles to loops that Inductor fuses
            step = self._run_math if cache.lengths.device.type == "cpu" else self._run
            # dynamic=False: the shapes never change, so one specialised graph serves every step
            self._forward = torch.compile(step, dynamic=False, fullgraph=True)
        batch, device = cache.lengths.numel(), cache.lengths.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.active = torch.zeros(batch, dtype=torch.bool, device=device)
        self.logits: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        if use_graph:
            self._capture()

    def _run(self) -> torch.Tensor:
        saved = self.cache.lengths.clone()
        logits, _ = self.model(self.tokens, cache=self.cache, rows=None, last_only=True)
        self.cache.lengths.copy_(torch.where(self.active, self.cache.lengths, saved))
        return logits[:, -1]

    def _run_math(self) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return self._run()

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
            self.logits = self._forward()

    @torch.inference_mode()
    def __call__(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """Logits (len(slots), V) for feeding `tokens[i]` to the sequence in `slots[i]`."""
        device = self.tokens.device
        idx = torch.tensor(slots, device=device)
        self.tokens.zero_()
        self.active.zero_()
        self.tokens[idx, 0] = torch.tensor(tokens, device=device)
        self.active[idx] = True
        if self.graph is not None:
            self.graph.replay()
            logits = self.logits
        else:
            logits = self._forward()
        return logits[idx]

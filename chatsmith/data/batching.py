"""Batching helpers every stage shares: a reproducible epoch order and right-padding.

`EpochOrder` shuffles items afresh each epoch as a pure function of (seed, epoch), so a data
loader's whole state is the number of items drawn so far, and resuming needs just that number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class EpochOrder:
    """Item indices in a shuffled order per epoch: `order[k]` is the k-th item drawn overall."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def __getitem__(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return int(self._perm[i])


def pad_right(rows: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    """(len(rows), width) long tensor: each row left-aligned, the rest filled with `value`;
    `width` defaults to the longest row."""
    width = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out

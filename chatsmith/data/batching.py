"""Batching helpers every stage shares: a reproducible epoch order and right-padding.

`EpochOrder` shuffles items afresh each epoch as a pure function of (seed, position), so a data
loader's whole state is the number of items drawn so far, and resuming needs just that number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finalizer: a cheap 64-bit hash with full avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def permuted_index(i: int, n: int, key: int) -> int:
    """Position `i` of a pseudo-random permutation of range(n) chosen by `key`.

    A 4-round Feistel network over the smallest even number of bits that covers n, with cycle
    walking back into range: a bijection computed in O(1) memory, so a billion windows need
    no billion-entry shuffle table, and any position can be looked up without the ones before.
    """
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for r in range(4):
            left, right = right, left ^ (_mix(key ^ ((right << 2) | r)) & mask)
        x = (left << half) | right
        if x < n:
            return x


class EpochOrder:
    """Item indices in a shuffled order per epoch: `order[k]` is the k-th item drawn overall."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __getitem__(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        return permuted_index(i, self.n, _mix(self.seed * 1_000_003 + epoch))


def pad_right(rows: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    """(len(rows), width) long tensor: each row left-aligned, the rest filled with `value`;
    `width` defaults to the longest row."""
    width = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out

"""Held-out splits: the two rules every data source uses, in one place.

- `split_every`: a fixed periodic split, for data with a stable order (the built-in corpus,
  task problems without explicit splits): the last item of every `every` is held out, so the
  split never changes and never depends on how much data is read.
- `split_tail`: for a user's own data with no held-out source given: the last 5% (at least
  one item) is held out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from chatsmith.errors import ChatsmithError

SPLITS = ("train", "val")
HELD_OUT_FRACTION = 0.05
BUILTIN_HELD_OUT_EVERY = 20  # the built-in corpus: 5% held out
TASK_HELD_OUT_EVERY = 10  # task problems: 10% held out (task sets are small)

T = TypeVar("T")
S = TypeVar("S", bound=Sequence)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ChatsmithError(f"unknown split {split!r}; use {' or '.join(SPLITS)}")


def split_every(items: Sequence[T], split: str, every: int) -> list[T]:
    """The `split` part of `items` when the last of every `every` items is held out (at least
    one is held out when there are two or more; a single item only trains)."""
    check_split(split)
    if len(items) < 2:
        return list(items) if split == "train" else []
    every = min(every, len(items))
    held = split == "val"
    return [x for i, x in enumerate(items) if (i % every == every - 1) == held]


def split_tail(items: S, fraction: float = HELD_OUT_FRACTION) -> tuple[S, S]:
    """(train, held-out): the last `fraction` of `items`, at least one, is held out."""
    n_val = max(1, round(len(items) * fraction))
    return items[:-n_val], items[-n_val:]

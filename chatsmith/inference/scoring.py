"""Score text with a model: mean loss and bits per byte over a token stream."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from chatsmith.data.batching import pad_right
from chatsmith.models import IGNORE_INDEX


@dataclass
class Score:
    loss: float  # mean cross-entropy per predicted token, in nats
    bpb: float  # bits per UTF-8 byte of the predicted text
    tokens: int
    bytes: int

    def to_dict(self) -> dict:
        return {"loss": self.loss, "bpb": self.bpb, "tokens": self.tokens, "bytes": self.bytes}


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Tokenizer-independent compression: nats summed over tokens, converted to bits per byte."""
    return total_nats / (math.log(2) * total_bytes) if total_bytes else float("nan")


@torch.no_grad()
def score_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    bytes_per_token: torch.Tensor,
    autocast=None,
    progress=None,
) -> Score:
    """Loss and bits per byte over (inputs, targets) batches; targets equal to IGNORE_INDEX
    (padding, prompt tokens) are not scored. The model is in eval mode meanwhile."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bpt = bytes_per_token.to(device)
    total_nats, total_bytes, total_tokens = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast() if autocast else contextlib.nullcontext():
            _, nats = model(x, y, reduction="none")
        valid = y != IGNORE_INDEX
        total_nats += float(nats[valid].sum())
        total_bytes += int(bpt[y[valid]].sum())
        total_tokens += int(valid.sum())
        if progress is not None:
            progress(len(x))
    model.train(was_training)
    return Score(
        total_nats / max(total_tokens, 1),
        bits_per_byte(total_nats, total_bytes),
        total_tokens,
        total_bytes,
    )


def score_tokens(
    model: nn.Module,
    tokens: torch.Tensor,
    bytes_per_token: torch.Tensor,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    autocast=None,
    progress=None,
) -> Score:
    """Evaluate consecutive windows of `tokens`; every token after the first is predicted once.

    Special tokens (0 bytes) are predicted too and add to the loss but not to the byte count,
    as the metric is defined for nanoGPT/nanochat-style evaluation.
    """
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    n_windows = max(1, math.ceil((len(tokens) - 1) / seq_len))
    starts = list(range(0, n_windows * seq_len, seq_len))

    def batches():
        for b in range(0, len(starts), batch_size):
            chunk = [tokens[s : s + seq_len + 1].tolist() for s in starts[b : b + batch_size]]
            yield (
                pad_right([c[:-1] for c in chunk], 0),
                pad_right([c[1:] for c in chunk], IGNORE_INDEX),
            )

    return score_batches(model, batches(), bytes_per_token, autocast, progress)

"""Score text with a model: mean loss and bits per byte over a token stream."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


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
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    n_windows = max(1, math.ceil((len(tokens) - 1) / seq_len))
    total_nats, total_bytes, total_tokens = 0.0, 0, 0
    starts = list(range(0, n_windows * seq_len, seq_len))
    bpt = bytes_per_token.to(device)
    for b in range(0, len(starts), batch_size):
        chunk = [tokens[s : s + seq_len + 1].long() for s in starts[b : b + batch_size]]
        width = max(len(c) for c in chunk)
        x = torch.full((len(chunk), width - 1), 0, dtype=torch.long)
        y = torch.full((len(chunk), width - 1), -1, dtype=torch.long)
        for i, c in enumerate(chunk):
            x[i, : len(c) - 1], y[i, : len(c) - 1] = c[:-1], c[1:]
        x, y = x.to(device), y.to(device)
        ctx = autocast() if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            _, nats = model(x, y, reduction="none")
        valid = y >= 0
        total_nats += float(nats[valid].sum())
        total_bytes += int(bpt[y[valid]].sum())
        total_tokens += int(valid.sum())
        if progress is not None:
            progress(len(chunk))
    if was_training:
        model.train()
    return Score(
        total_nats / max(total_tokens, 1),
        bits_per_byte(total_nats, total_bytes),
        total_tokens,
        total_bytes,
    )

"""Score text with a model: mean loss and bits per byte over a token stream (decoders), or
masked-token loss and accuracy (encoders)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chatsmith.models import IGNORE_INDEX

MASK_FRACTION = 0.15  # BERT's choice (Devlin et al., 2019)


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


def mask_tokens(
    x: torch.Tensor, mask_id: int, gen: torch.Generator, real: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): a random MASK_FRACTION of the real tokens of `x` (B, S) hidden behind
    `mask_id`; targets hold the hidden tokens and IGNORE_INDEX everywhere else."""
    hidden = torch.rand(x.shape, generator=gen) < MASK_FRACTION
    if real is not None:
        hidden &= real
    targets = torch.where(hidden, x, torch.full_like(x, IGNORE_INDEX))
    inputs = torch.where(hidden, torch.full_like(x, mask_id), x)
    return inputs, targets


@dataclass
class MaskedScore:
    loss: float  # mean cross-entropy per masked token, in nats
    accuracy: float  # share of masked tokens whose likeliest prediction is the original
    tokens: int  # masked tokens scored

    def to_dict(self) -> dict:
        return {"masked_loss": self.loss, "masked_accuracy": self.accuracy, "tokens": self.tokens}


@torch.no_grad()
def score_masked(
    model: nn.Module,
    tokens: torch.Tensor,
    mask_id: int,
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    autocast=None,
    seed: int = 0,
) -> MaskedScore:
    """Masked-LM figures over consecutive windows of `tokens`, with masks drawn from `seed`
    (the same tokens are hidden every time, so scores of different runs compare)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    gen = torch.Generator().manual_seed(seed)
    total_nats, correct, count = 0.0, 0, 0
    starts = list(range(0, len(tokens), seq_len))
    for b in range(0, len(starts), batch_size):
        chunk = [tokens[s : s + seq_len].long() for s in starts[b : b + batch_size]]
        x = torch.zeros(len(chunk), max(len(c) for c in chunk), dtype=torch.long)
        real = torch.zeros_like(x, dtype=torch.bool)
        for i, c in enumerate(chunk):
            x[i, : len(c)], real[i, : len(c)] = c, True
        inputs, targets = mask_tokens(x, mask_id, gen, real)
        ctx = autocast() if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            logits, _ = model(inputs.to(device), padding_mask=real.to(device))
        hidden = targets.to(device) != IGNORE_INDEX
        picked, wanted = logits[hidden].float(), targets.to(device)[hidden]
        total_nats += float(F.cross_entropy(picked, wanted, reduction="sum"))
        correct += int((picked.argmax(-1) == wanted).sum())
        count += int(hidden.sum())
    if was_training:
        model.train()
    return MaskedScore(total_nats / max(count, 1), correct / max(count, 1), count)

"""Score text with a model: mean loss and bits per byte over a token stream (decoders), or
masked-token loss and accuracy (encoders)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from chatsmith.data.batching import pad_right
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
        chunk = [tokens[s : s + seq_len].tolist() for s in starts[b : b + batch_size]]
        x = pad_right(chunk, 0)
        real = torch.arange(x.size(1))[None, :] < torch.tensor([len(c) for c in chunk])[:, None]
        inputs, targets = mask_tokens(x, mask_id, gen, real)
        with autocast() if autocast else contextlib.nullcontext():
            logits, _ = model(inputs.to(device), padding_mask=real.to(device))
        hidden = targets.to(device) != IGNORE_INDEX
        picked, wanted = logits[hidden].float(), targets.to(device)[hidden]
        total_nats += float(F.cross_entropy(picked, wanted, reduction="sum"))
        correct += int((picked.argmax(-1) == wanted).sum())
        count += int(hidden.sum())
    model.train(was_training)
    return MaskedScore(total_nats / max(count, 1), correct / max(count, 1), count)

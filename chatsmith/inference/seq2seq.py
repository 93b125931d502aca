"""Batches of (source, target) token-id pairs for the two model families that learn them,
and their held-out loss. An encoder-decoder reads the source with its encoder; a decoder-only
model reads it as a prefix. Both predict exactly the same target tokens, so losses compare."""

from __future__ import annotations

import torch
from torch import nn

from chatsmith.data.batching import pad_right
from chatsmith.models import IGNORE_INDEX

Pairs = list[tuple[list[int], list[int]]]
HELD_OUT_PAIRS = 2_000  # held-out pairs scored at the end of training and by `eval`


def pad_batch(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) right-padded to the longest sequence; mask (B, S) is True at real tokens."""
    ids = pad_right(seqs, pad)
    lengths = torch.tensor([len(s) for s in seqs])
    return ids, torch.arange(ids.size(1))[None, :] < lengths[:, None]


def seq2seq_batch(pairs: Pairs, bos: int, pad: int) -> dict:
    """Encoder-decoder teacher forcing: source; decoder input BOS + target; predict target.
    Each pair's target already ends with its stop token."""
    src, src_mask = pad_batch([p[0] for p in pairs], pad)
    tgt_in, _ = pad_batch([[bos, *p[1][:-1]] for p in pairs], pad)
    tgt_out, out_mask = pad_batch([p[1] for p in pairs], pad)
    return {
        "src": src,
        "src_mask": src_mask,
        "tgt": tgt_in,
        "y": tgt_out.masked_fill(~out_mask, IGNORE_INDEX),
    }


def prefix_batch(pairs: Pairs, bos: int, sep: int, pad: int) -> dict:
    """The same pairs for a decoder-only model: BOS source SEP target in one sequence, loss on
    the target alone, so it predicts exactly the tokens an encoder-decoder does."""
    seqs = [[bos, *s, sep, *t] for s, t in pairs]
    ids, mask = pad_batch(seqs, pad)
    y = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
    for i, (s, _) in enumerate(pairs):
        y[i, : len(s) + 1] = IGNORE_INDEX  # the source and the separator are given, not learned
    return {"x": ids[:, :-1], "y": y}


def batch_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean loss per target token of a batch from `seq2seq_batch` or `prefix_batch`."""
    if "src" in batch:
        return model(batch["src"], batch["tgt"], batch["y"], src_mask=batch["src_mask"])[1]
    return model(batch["x"], batch["y"])[1]


def to_batch(pairs: Pairs, bos: int, pad: int, sep: int | None, device) -> dict:
    """`sep=None`: encoder-decoder batch; otherwise the decoder-only (prefix) batch."""
    batch = seq2seq_batch(pairs, bos, pad) if sep is None else prefix_batch(pairs, bos, sep, pad)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def score_pairs(
    model: nn.Module, pairs: Pairs, bos: int, pad: int, sep: int | None, batch_size: int
) -> tuple[float, int]:
    """(mean loss per target token in nats, target tokens) over `pairs`, teacher-forced."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    for i in range(0, len(pairs), batch_size):
        batch = to_batch(pairs[i : i + batch_size], bos, pad, sep, device)
        n = int((batch["y"] != IGNORE_INDEX).sum())
        nats += float(batch_loss(model, batch)) * n
        count += n
    model.train(was_training)
    return nats / max(count, 1), count

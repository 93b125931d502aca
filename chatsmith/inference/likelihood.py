"""Log-probability of a continuation given a context, batched: what multiple-choice benchmarks
(HellaSwag, ARC, ...) ask of a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def continuation_logprobs(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """For each (context ids, continuation ids): the summed log-probability of the continuation
    and whether greedy decoding would have produced it token by token.

    The context must hold at least one token (a BOS for an empty one). Pairs longer than the
    model's context keep their last tokens: the continuation is always scored whole. Pairs are
    batched longest first, right-padded; padding sits after every scored position, so under
    the causal mask it changes nothing.
    """
    if any(not ctx or not cont for ctx, cont in pairs):
        raise ValueError("every pair needs a non-empty context and continuation")
    window = model.cfg.max_seq_len + 1
    device = next(model.parameters()).device
    rows = [((ctx + cont)[-window:], len(cont)) for ctx, cont in pairs]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        width = len(rows[chunk[0]][0]) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, i in enumerate(chunk):
            seq = rows[i][0][:-1]
            x[j, : len(seq)] = torch.tensor(seq)
        logits, _ = model(x.to(device))  # (B, width, V)
        logprobs = F.log_softmax(logits.float(), dim=-1)
        for j, i in enumerate(chunk):
            tokens, n = rows[i]
            end = len(tokens) - 1  # positions 0..end-1 predict tokens 1..end
            target = torch.tensor(tokens[-n:], device=device)
            lp = logprobs[j, end - n : end]  # (n, V)
            picked = lp.gather(-1, target[:, None])[:, 0]
            out[i] = (float(picked.sum()), bool((lp.argmax(-1) == target).all()))
    return out  # type: ignore[return-value]

"""Held-out loss and bits per byte of a run on any text."""

from __future__ import annotations

import torch

from chatsmith.data import chitchat
from chatsmith.data.sources import iter_documents
from chatsmith.data.tokens import tokenize_documents
from chatsmith.inference.loading import LoadedRun
from chatsmith.inference.scoring import Score, score_tokens
from chatsmith.runtime import autocast


def evaluate_text(
    run: LoadedRun, data: str, batch_size: int = 8, max_tokens: int | None = None, progress=None
) -> Score:
    docs = chitchat.documents("val") if data == chitchat.BUILTIN_NAME else iter_documents(data)
    tokens = tokenize_documents(run.tokenizer, docs, max_tokens)
    bpt = torch.tensor(run.tokenizer.bytes_per_token, dtype=torch.long)
    device = next(run.model.parameters()).device
    return score_tokens(
        run.model,
        tokens,
        bpt,
        run.cfg.max_seq_len,
        batch_size,
        autocast=lambda: autocast(device),
        progress=progress,
    )

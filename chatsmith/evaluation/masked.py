"""Held-out masked-token loss and accuracy of an encoder run on any text."""

from __future__ import annotations

from chatsmith.data import chitchat
from chatsmith.data.sources import iter_documents
from chatsmith.data.tokens import tokenize_documents
from chatsmith.inference.loading import LoadedRun
from chatsmith.inference.scoring import MaskedScore, score_masked
from chatsmith.runtime import autocast

BUILTIN_VAL = "builtin:chitchat"


def evaluate_masked(
    run: LoadedRun, data: str, batch_size: int = 8, max_tokens: int | None = None
) -> MaskedScore:
    """Hide 15% of the tokens (the same ones every time) and score the model's guesses."""
    docs = chitchat.documents("val") if data == BUILTIN_VAL else iter_documents(data)
    tokens = tokenize_documents(run.tokenizer, docs, max_tokens)
    device = next(run.model.parameters()).device
    return score_masked(
        run.model,
        tokens,
        run.tokenizer.mask_id,
        run.cfg.max_seq_len,
        batch_size,
        autocast=lambda: autocast(device),
    )

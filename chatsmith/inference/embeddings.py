"""Sentence embeddings from an encoder run: the mean of the final token states over the real
tokens (padding excluded), L2-normalised, as sentence-transformers models pool them.

Texts are embedded in batches; within a call they are sorted by length first, so that a batch
pads little, and the results are put back in the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chatsmith.errors import ChatsmithError
from chatsmith.inference.loading import LoadedRun
from chatsmith.tokenizer import Tokenizer

DEFAULT_BATCH = 32


def check_encoder(run: LoadedRun) -> None:
    if run.cfg.arch != "encoder":
        raise ChatsmithError(
            f"{run.path} is a {run.cfg.arch} run; embeddings come from an encoder "
            "(chatsmith pretrain --arch encoder, or an imported BERT-family model)"
        )


def embedding_ids(tok: Tokenizer, text: str) -> list[int]:
    """Tokens of one text as the encoder saw text in training: chatsmith's document start
    token first; an imported tokenizer adds its own markers (BERT's [CLS] ... [SEP])."""
    return [*tok.doc_start, *tok.hf.encode(text, add_special_tokens=True).ids]


@torch.no_grad()
def embed_ids(
    model: nn.Module, seqs: Sequence[Sequence[int]], batch_size: int = DEFAULT_BATCH
) -> torch.Tensor:
    """(N, d) float32 unit vectors for token sequences (each non-empty, within the context)."""
    if not seqs:
        raise ChatsmithError("nothing to embed")
    if any(len(s) == 0 for s in seqs):
        raise ChatsmithError("cannot embed an empty input")
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), model.cfg.d_model)
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        width = max(len(seqs[i]) for i in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        real = torch.zeros(len(rows), width, dtype=torch.bool)
        for j, i in enumerate(rows):
            ids[j, : len(seqs[i])] = torch.tensor(list(seqs[i]), dtype=torch.long)
            real[j, : len(seqs[i])] = True
        ids, real = ids.to(device), real.to(device)
        h = model.hidden(ids, real).float()  # (B, S, d)
        weights = real.unsqueeze(-1).float()
        pooled = (h * weights).sum(1) / weights.sum(1)  # mean over real tokens only
        out[rows] = F.normalize(pooled, dim=-1).cpu()
    return out


def embed_texts(
    run: LoadedRun, texts: Sequence[str], batch_size: int = DEFAULT_BATCH, truncate: bool = True
) -> tuple[torch.Tensor, int]:
    """(embeddings (N, d), tokens read). A text longer than the context is cut to its first
    `max_seq_len` tokens, or refused with `truncate=False`."""
    check_encoder(run)
    limit = run.cfg.max_seq_len
    seqs = []
    for n, text in enumerate(texts):
        ids = embedding_ids(run.tokenizer, text)
        if len(ids) > limit and not truncate:
            raise ChatsmithError(
                f"input {n} has {len(ids)} tokens; the model reads at most {limit}"
            )
        seqs.append(ids[:limit])
    return embed_ids(run.model, seqs, batch_size), sum(len(s) for s in seqs)


def read_inputs(texts: Sequence[str] | None, file: str | None) -> list[str]:
    """--text values, then the non-blank lines of --file."""
    out = list(texts or [])
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ChatsmithError(f"cannot read {file}: {e}") from None
        out += [line for line in lines if line.strip()]
    if not out:
        raise ChatsmithError("give the text to embed: --text TEXT (repeatable) or --file lines.txt")
    return out

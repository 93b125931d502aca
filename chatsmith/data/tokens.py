"""Token streams for language modelling: documents -> one long tensor -> fixed-length windows."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from chatsmith.data.batching import EpochOrder
from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import Tokenizer

ENCODE_CHUNK = 512  # documents per encode_batch call: the Rust side tokenizes them in parallel


def tokenize_documents(
    tok: Tokenizer, docs: Iterable[str], max_tokens: int | None = None
) -> torch.Tensor:
    """Concatenate documents, each led by the BOS token (where the tokenizer has one), into one
    int32 tensor."""
    parts: list[torch.Tensor] = []
    total, chunk = 0, []

    def flush() -> None:
        nonlocal total
        for ids in tok.encode_batch(chunk):
            parts.append(torch.tensor([*tok.doc_start, *ids], dtype=torch.int32))
            total += len(parts[-1])
        chunk.clear()

    for doc in docs:
        chunk.append(doc)
        if len(chunk) == ENCODE_CHUNK:
            flush()
            if max_tokens is not None and total >= max_tokens:
                break
    if chunk:
        flush()
    if not parts:
        raise ChatsmithError("no documents to tokenize")
    tokens = torch.cat(parts)
    return tokens[:max_tokens] if max_tokens is not None else tokens


class TokenWindows:
    """Shuffled, non-overlapping windows of `seq_len + 1` tokens, drawn `batch_size` at a time.

    The order is an `EpochOrder`, so the loader's whole state is the number of windows drawn.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int):
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise ChatsmithError(
                f"the data has {len(tokens)} tokens, fewer than one training sequence "
                f"({seq_len + 1}); give more text or a shorter --seq-len"
            )
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.position = 0
        self.order = EpochOrder(self.n_windows, seed)

    def _window(self, index: int) -> torch.Tensor:
        start = self.order[index] * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.stack([self._window(self.position + j) for j in range(self.batch_size)])
        self.position += self.batch_size
        rows = rows.long()
        return rows[:, :-1], rows[:, 1:]

    @property
    def epoch(self) -> float:
        return self.position / self.n_windows

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

"""Token streams for language modelling: documents -> token arrays -> fixed-length windows."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

import numpy as np
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

    `tokens` is one array or a list of them (memory-mapped shards); windows never cross an
    array's end. The order is an `EpochOrder`, so the loader's whole state is the number of
    windows drawn so far. `batch_size` is the global batch: with `world` > 1
    each rank takes rows [rank * B / world, (rank + 1) * B / world) of it, so N processes read
    exactly the rows one process would, and a resume may change the number of processes.
    """

    def __init__(
        self,
        tokens: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        arrays = list(tokens) if isinstance(tokens, (list, tuple)) else [tokens]
        counts = [max(0, (len(a) - 1) // seq_len) for a in arrays]
        self.n_windows = sum(counts)
        if self.n_windows < 1:
            raise ChatsmithError(
                f"the data has {sum(len(a) for a in arrays)} tokens, fewer than one training "
                f"sequence ({seq_len + 1}); give more text or a shorter --seq-len"
            )
        if batch_size % world:
            raise ChatsmithError(
                f"batch size {batch_size} does not split evenly over {world} processes; "
                f"give a --batch-size divisible by {world}"
            )
        self.arrays = [a for a, c in zip(arrays, counts) if c]
        self.starts = np.cumsum([0] + [c for c in counts if c]).tolist()  # first window per array
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world = rank, world
        self.position = 0
        self.order = EpochOrder(self.n_windows, seed)

    def _window(self, index: int) -> torch.Tensor:
        w = self.order[index]
        a = bisect.bisect_right(self.starts, w) - 1
        start = (w - self.starts[a]) * self.seq_len
        row = self.arrays[a][start : start + self.seq_len + 1]
        if isinstance(row, np.ndarray):
            return torch.from_numpy(row.astype(np.int64))
        return row.long()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the next global batch, as (inputs, targets)."""
        local = self.batch_size // self.world
        first = self.position + self.rank * local
        rows = torch.stack([self._window(first + j) for j in range(local)])
        self.position += self.batch_size
        return rows[:, :-1], rows[:, 1:]

    @property
    def epoch(self) -> float:
        return self.position / self.n_windows

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

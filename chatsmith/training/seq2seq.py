"""The sequence-to-sequence objective (teacher forcing on source/target pairs); it plugs into
the same training loop as pretraining, SFT and RL. An encoder-decoder reads the source with its
encoder; a decoder-only model reads it as a prefix, so the two families compare on a task."""

from __future__ import annotations

import torch
from torch import nn

from chatsmith.data.batching import EpochOrder
from chatsmith.inference.seq2seq import HELD_OUT_PAIRS, Pairs, batch_loss, score_pairs, to_batch
from chatsmith.models import IGNORE_INDEX

QUICK_EVAL_PAIRS = 256


class Seq2Seq:
    """Learn target given source, by teacher forcing on (source, target) token-id pairs.

    `sep_id=None` trains an encoder-decoder; otherwise a decoder-only model on BOS source SEP
    target. Pairs are drawn in a shuffled order per epoch (a pure function of seed and epoch),
    so resuming needs only the number drawn.
    """

    name = "seq2seq"

    def __init__(
        self,
        pairs: Pairs,
        val_pairs: Pairs,
        bos_id: int,
        pad_id: int,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        sep_id: int | None = None,
    ):
        self.pairs, self.val_pairs = pairs, val_pairs
        self.bos, self.pad, self.sep = bos_id, pad_id, sep_id
        self.batch_size, self.device = batch_size, device
        self.order = EpochOrder(len(pairs), seed)
        self.position = 0

    def _batch(self, pairs: Pairs) -> dict:
        return to_batch(pairs, self.bos, self.pad, self.sep, self.device)

    def next_batch(self, model: nn.Module) -> dict:
        picked = [self.pairs[self.order[self.position + i]] for i in range(self.batch_size)]
        self.position += self.batch_size
        return self._batch(picked)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return batch_loss(model, batch), {"epoch": self.position / len(self.pairs)}

    def batch_tokens(self, batch: dict) -> int:
        return int((batch["y"] != IGNORE_INDEX).sum())

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        """Mean loss per target token over the first held-out pairs (a fixed set)."""
        pairs = self.val_pairs[: HELD_OUT_PAIRS if final else QUICK_EVAL_PAIRS]
        loss, tokens = score_pairs(model, pairs, self.bos, self.pad, self.sep, self.batch_size)
        return {"val_loss": loss, "val_tokens": tokens}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

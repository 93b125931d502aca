"""Objectives for the encoder (masked-LM) and for sequence-to-sequence tasks.

They plug into the same training loop as pretraining, SFT and RL.
"""

from __future__ import annotations

import torch
from torch import nn

from chatsmith.data.tokens import TokenWindows
from chatsmith.inference.scoring import mask_tokens, score_masked
from chatsmith.inference.seq2seq import HELD_OUT_PAIRS, batch_loss, score_pairs, to_batch
from chatsmith.models import IGNORE_INDEX

QUICK_EVAL_TOKENS = 32_768
QUICK_EVAL_PAIRS = 256


class MaskedLM:
    """Hide a random 15% of tokens behind the mask token; learn to restore them."""

    name = "masked-lm"

    def __init__(
        self,
        windows: TokenWindows,
        val_tokens: torch.Tensor,
        mask_id: int,
        device: torch.device,
        seed: int,
    ):
        self.windows, self.val, self.mask_id, self.device = windows, val_tokens, mask_id, device
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self, model: nn.Module) -> dict:
        # windows come as (input, next-token) pairs; the encoder reads the input side whole
        inputs, targets = mask_tokens(self.windows.next_batch()[0], self.mask_id, self.gen)
        return {"x": inputs.to(self.device), "y": targets.to(self.device)}

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return model(batch["x"], batch["y"])[1], {"epoch": self.windows.epoch}

    def batch_tokens(self, batch: dict) -> int:
        return batch["x"].numel()

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        score = score_masked(
            model,
            self.val,
            self.mask_id,
            self.windows.seq_len,
            self.windows.batch_size,
            None if final else QUICK_EVAL_TOKENS,
        )
        return {"val_loss": score.loss, "val_accuracy": score.accuracy, "val_tokens": score.tokens}

    def state_dict(self) -> dict:
        return {**self.windows.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)
        self.gen.set_state(state["gen"])


class Seq2Seq:
    """Learn target given source, by teacher forcing on (source, target) token-id pairs.

    An encoder-decoder reads the source with its encoder; a decoder-only model reads it as a
    prefix (`sep_id` between the two). Pairs are shuffled each epoch by a pure function of
    (seed, epoch), so resuming needs only the number of pairs drawn.
    """

    name = "seq2seq"

    def __init__(
        self,
        pairs: list[tuple[list[int], list[int]]],
        val_pairs: list[tuple[list[int], list[int]]],
        bos_id: int,
        pad_id: int,
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        sep_id: int | None = None,
    ):
        self.pairs, self.val_pairs = pairs, val_pairs
        self.bos, self.pad, self.sep = bos_id, pad_id, sep_id
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.position = 0
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _batch(self, pairs: list[tuple[list[int], list[int]]]) -> dict:
        return to_batch(pairs, self.bos, self.pad, self.sep, self.device)

    def _pair(self, index: int) -> tuple[list[int], list[int]]:
        epoch, i = divmod(index, len(self.pairs))
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.pairs), generator=g)
        return self.pairs[int(self._order[i])]

    def next_batch(self, model: nn.Module) -> dict:
        picked = [self._pair(self.position + i) for i in range(self.batch_size)]
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

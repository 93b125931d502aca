"""Objectives for the encoder (masked-LM) and the encoder-decoder (sequence-to-sequence).

They plug into the same training loop as pretraining, SFT and RL.
"""

from __future__ import annotations

import torch
from torch import nn

from chatsmith.data.tokens import TokenWindows
from chatsmith.models import IGNORE_INDEX

MASK_FRACTION = 0.15  # BERT's choice (Devlin et al., 2019)


class MaskedLM:
    """Hide a random 15% of tokens behind the mask token; learn to restore them."""

    name = "masked-lm"

    def __init__(
        self,
        windows: TokenWindows,
        val_windows: TokenWindows,
        mask_id: int,
        device: torch.device,
        seed: int,
    ):
        self.windows, self.val, self.mask_id, self.device = windows, val_windows, mask_id, device
        self.gen = torch.Generator().manual_seed(seed)

    def _mask(self, x: torch.Tensor, gen: torch.Generator) -> dict:
        hidden = torch.rand(x.shape, generator=gen) < MASK_FRACTION
        targets = torch.where(hidden, x, torch.full_like(x, IGNORE_INDEX))
        inputs = torch.where(hidden, torch.full_like(x, self.mask_id), x)
        return {"x": inputs.to(self.device), "y": targets.to(self.device)}

    def next_batch(self, model: nn.Module) -> dict:
        return self._mask(self.windows.next_batch()[0], self.gen)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return model(batch["x"], batch["y"])[1], {}

    def batch_tokens(self, batch: dict) -> int:
        return batch["x"].numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool) -> dict:
        self.val.position = 0  # the same held-out batch and masks every time
        batch = self._mask(self.val.next_batch()[0], torch.Generator().manual_seed(0))
        return {"val_loss": float(model(batch["x"], batch["y"])[1])}

    def state_dict(self) -> dict:
        return {**self.windows.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)
        self.gen.set_state(state["gen"])


def pad_batch(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) right-padded to the longest sequence; mask is True at real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, ids.ne(pad) if pad >= 0 else torch.ones_like(ids, dtype=torch.bool)


class Seq2Seq:
    """Learn target given source: teacher forcing on (source, target) pairs of token ids."""

    name = "seq2seq"

    def __init__(
        self,
        pairs: list[tuple[list[int], list[int]]],
        val_pairs: list[tuple[list[int], list[int]]],
        bos_id: int,
        pad_id: int,
        batch_size: int,
        device: torch.device,
    ):
        self.pairs, self.val_pairs = pairs, val_pairs
        self.bos, self.pad, self.batch_size, self.device = bos_id, pad_id, batch_size, device
        self.position = 0

    def _batch(self, pairs: list[tuple[list[int], list[int]]]) -> dict:
        src, src_mask = pad_batch([p[0] for p in pairs], self.pad)
        tgt_in, _ = pad_batch([[self.bos, *p[1][:-1]] for p in pairs], self.pad)
        tgt_out, out_mask = pad_batch([p[1] for p in pairs], self.pad)
        tgt_out = tgt_out.masked_fill(~out_mask, IGNORE_INDEX)
        d = self.device
        return {
            "src": src.to(d),
            "src_mask": src_mask.to(d),
            "tgt": tgt_in.to(d),
            "y": tgt_out.to(d),
        }

    def next_batch(self, model: nn.Module) -> dict:
        n = len(self.pairs)
        picked = [self.pairs[(self.position + i) % n] for i in range(self.batch_size)]
        self.position += self.batch_size
        return self._batch(picked)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return model(batch["src"], batch["tgt"], batch["y"], src_mask=batch["src_mask"])[1], {}

    def batch_tokens(self, batch: dict) -> int:
        return int((batch["y"] != IGNORE_INDEX).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool) -> dict:
        b = self._batch(self.val_pairs)
        return {"val_loss": float(model(b["src"], b["tgt"], b["y"], src_mask=b["src_mask"])[1])}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])

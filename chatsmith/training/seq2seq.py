"""The sequence-to-sequence objective for the encoder-decoder (teacher forcing); it plugs into
the same training loop as pretraining, SFT and RL."""

from __future__ import annotations

import torch
from torch import nn

from chatsmith.data.batching import pad_right
from chatsmith.models import IGNORE_INDEX


def _padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) right-padded to the longest sequence; mask is True at real tokens."""
    ids = pad_right(seqs, pad)
    lengths = torch.tensor([len(s) for s in seqs])
    return ids, torch.arange(ids.shape[1])[None, :] < lengths[:, None]


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
        src, src_mask = _padded([p[0] for p in pairs], self.pad)
        tgt_in, _ = _padded([[self.bos, *p[1][:-1]] for p in pairs], self.pad)
        tgt_out, out_mask = _padded([p[1] for p in pairs], self.pad)
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

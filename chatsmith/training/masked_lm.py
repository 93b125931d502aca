"""The masked-LM objective for the bidirectional encoder (BERT-style); it plugs into the same
training loop as pretraining, SFT and RL."""

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

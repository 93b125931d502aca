"""The masked-LM objective for the bidirectional encoder (BERT-style); it plugs into the same
training loop as pretraining, SFT and RL."""

from __future__ import annotations

import torch
from torch import nn

from chatsmith.data.tokens import TokenWindows
from chatsmith.inference.scoring import mask_tokens, score_masked

QUICK_EVAL_TOKENS = 32_768


class MaskedLM:
    """Hide a random 15% of tokens behind the mask token; learn to restore them.

    Held-out figures are the masked-token loss and accuracy with masks drawn from a fixed seed,
    so every evaluation (and `chatsmith eval`) hides the same tokens.
    """

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

"""Bidirectional encoder (BERT-style): every token attends to every other; a masked-LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatsmith.models.config import ModelConfig
from chatsmith.models.decoder import IGNORE_INDEX
from chatsmith.models.layers import Block, Positional, final_norm, init_weights


class EncoderStack(nn.Module):
    """Embedding + non-causal blocks + final norm; also the first half of an encoder-decoder."""

    def __init__(self, cfg: ModelConfig, embed: nn.Embedding | None = None):
        super().__init__()
        self.embed = embed if embed is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positional = Positional(cfg)
        self.blocks = nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg.n_layer))
        self.norm = final_norm(cfg)

    def forward(self, idx: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Hidden states (B, S, d); `padding_mask` (B, S) is True where a real token is.

        Padding keys are masked out of every row's attention, so a real token's state does not
        depend on how much padding follows it (padded positions' own states are meaningless).
        """
        positions = torch.arange(idx.size(1), device=idx.device)
        x = self.positional.embed(self.embed(idx), positions)
        for i, block in enumerate(self.blocks):
            x = block(x, self.positional.rotary, positions, i, key_padding_mask=padding_mask)
        return self.norm(x)


class Encoder(nn.Module):
    """Masked language model: predict the original token at masked positions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.stack = EncoderStack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.stack.embed.weight

    def hidden(self, idx: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Contextual token states (B, S, d), the input to sentence embeddings."""
        return self.stack(idx, padding_mask)

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """(logits, loss); loss counts only targets that are not IGNORE_INDEX (the masked ones)."""
        h = self.stack(idx, padding_mask)
        logits = self.lm_head(h).float()
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return None, loss

"""Encoder-decoder (the original Transformer's shape): a bidirectional encoder reads the source,
a causal decoder writes the target while cross-attending to the encoder's output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatsmith.models.config import ModelConfig
from chatsmith.models.decoder import IGNORE_INDEX
from chatsmith.models.encoder import EncoderStack
from chatsmith.models.layers import Block, RMSNorm, init_weights


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n_dec = cfg.n_decoder_layer or cfg.n_layer
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by both sides
        self.encoder = EncoderStack(cfg, embed=self.embed)
        self.blocks = nn.ModuleList(Block(cfg, causal=True, cross=True) for _ in range(n_dec))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer + n_dec)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return self.encoder(src, src_mask)

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor | None = None) -> Tensor:
        positions = torch.arange(tgt.size(1), device=tgt.device)
        x = self.embed(tgt)
        for i, block in enumerate(self.blocks):
            x = block(
                x, self.encoder.rotary, positions, i, memory=memory, memory_padding_mask=src_mask
            )
        return self.lm_head(self.norm(x)).float()

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        targets: Tensor | None = None,
        src_mask: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """(logits, loss) for target tokens given the source; `src_mask` True at real tokens."""
        logits = self.decode(tgt, self.encode(src, src_mask), src_mask)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return None, loss

"""Decoder-only transformer (GPT): token embedding, causal blocks, final norm, LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatsmith.models.config import ModelConfig
from chatsmith.models.layers import Block, CacheView, KVCache, Positional, final_norm, init_weights

IGNORE_INDEX = -1  # target value that contributes no loss (prompt tokens in SFT, padding)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positional = Positional(cfg)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layer))
        self.norm = final_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        rows: Tensor | None = None,
        last_only: bool = False,
        reduction: str = "mean",
    ) -> tuple[Tensor | None, Tensor | None]:
        """Return (logits, loss).

        With `targets`, the loss is cross-entropy over positions whose target is not
        IGNORE_INDEX, and logits are not returned (saves the (B, S, V) tensor's memory).
        With `cache`, idx extends the cache rows `rows` in place; `rows=None` means every row of
        the cache at once (static shapes, for CUDA-graph decoding).
        """
        B, S = idx.shape
        view = None
        if cache is not None:
            view = CacheView(cache, rows, S)
            positions = view.positions
        else:
            if S > self.cfg.max_seq_len:
                raise ValueError(f"sequence length {S} exceeds max_seq_len {self.cfg.max_seq_len}")
            positions = torch.arange(S, device=idx.device)
        x = self.positional.embed(self.embed(idx), positions)
        for i, block in enumerate(self.blocks):
            x = block(x, self.positional.rotary, positions, i, view)
        if view is not None:
            view.advance()
        x = self.norm(x)
        if targets is not None:
            logits = self.lm_head(x).float()
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction=reduction,
            )
            return None, loss if reduction != "none" else loss.view(B, S)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x).float(), None

    def new_cache(self, batch_size: int, device, dtype) -> KVCache:
        return KVCache.for_model(self.cfg, batch_size, device, dtype)

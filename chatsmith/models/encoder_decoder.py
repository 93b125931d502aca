"""Encoder-decoder (the original Transformer's shape): a bidirectional encoder reads the source,
a causal decoder writes the target while cross-attending to the encoder's output.

For generation the source is encoded once (`encode_into`): each decoder layer's cross-attention
keys/values of it are stored in the cache next to the decoder's own self-attention keys/values,
so a decoding step projects only the new token, as in a decoder-only model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatsmith.models.config import ModelConfig
from chatsmith.models.decoder import IGNORE_INDEX
from chatsmith.models.encoder import EncoderStack
from chatsmith.models.layers import Block, CacheView, KVCache, Positional, final_norm, init_weights


class CrossKVCache(KVCache):
    """A decoder's KV cache plus, per row, the cross-attention keys/values of its source."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device, dtype):
        n_dec = cfg.n_decoder_layer or cfg.n_layer
        super().__init__(
            n_dec, batch_size, cfg.max_seq_len, cfg.n_kv_head, cfg.head_dim, device, dtype
        )
        shape = (n_dec, batch_size, cfg.n_kv_head, cfg.max_seq_len, cfg.head_dim)
        self.cross_k = torch.zeros(shape, device=device, dtype=dtype)
        self.cross_v = torch.zeros(shape, device=device, dtype=dtype)
        self.source_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    def cross(self, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Keys and values (L, B, H, T, D) and key mask (B, T) of the rows' sources."""
        lengths = self.source_lengths if rows is None else self.source_lengths[rows]
        if rows is None:  # static shapes (CUDA graphs): every row, the whole length
            k, v = self.cross_k, self.cross_v
        else:
            span = max(1, int(lengths.max()))
            k = self.cross_k[:, :, :, :span].index_select(1, rows)
            v = self.cross_v[:, :, :, :span].index_select(1, rows)
        keys = torch.arange(k.size(3), device=k.device)
        # an idle row (no source) still sees key 0, so that it computes numbers, not NaN
        mask = (keys[None, :] < lengths[:, None]) | (keys[None, :] == 0)
        return k, v, mask

    def nbytes(self) -> int:
        return super().nbytes() + self.cross_k.numel() * self.cross_k.element_size() * 2


class EncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        n_dec = cfg.n_decoder_layer or cfg.n_layer
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by both sides
        self.encoder = EncoderStack(cfg, embed=self.embed)
        self.positional = Positional(cfg)
        self.blocks = nn.ModuleList(Block(cfg, causal=True, cross=True) for _ in range(n_dec))
        self.norm = final_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        init_weights(self, cfg.n_layer + n_dec)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        return self.encoder(src, src_mask)

    def new_cache(self, batch_size: int, device, dtype) -> CrossKVCache:
        return CrossKVCache(self.cfg, batch_size, device, dtype)

    def encode_into(
        self, cache: CrossKVCache, rows: Tensor, src: Tensor, src_mask: Tensor | None = None
    ) -> None:
        """Encode sources (B, T) once and store every decoder layer's cross keys/values for
        `rows` of the cache; also empties those rows' self-attention cache."""
        T = src.size(1)
        if T > cache.max_seq_len:
            raise ValueError(f"source of {T} tokens exceeds max_seq_len {cache.max_seq_len}")
        memory = self.encode(src, src_mask)  # (B, T, d)
        for i, block in enumerate(self.blocks):
            k, v = block.cross_attn.project_kv(memory)  # (B, H, T, D)
            cache.cross_k[i, rows, :, :T] = k.to(cache.cross_k.dtype)
            cache.cross_v[i, rows, :, :T] = v.to(cache.cross_v.dtype)
        lengths = src_mask.sum(1) if src_mask is not None else torch.full_like(rows, T)
        cache.source_lengths[rows] = lengths.to(cache.source_lengths.device)
        cache.reset(rows)

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor | None = None,
        src_mask: Tensor | None = None,
        *,
        cache: CrossKVCache | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states (B, S, d) of target tokens, reading the source either from
        `memory` (B, T, d) or, with `cache`, from the keys/values `encode_into` stored."""
        view, cross_k, cross_v = None, None, None
        if cache is not None:
            view = CacheView(cache, rows, tgt.size(1))
            positions = view.positions  # (B, S)
            cross_k, cross_v, src_mask = cache.cross(rows)
        else:
            positions = torch.arange(tgt.size(1), device=tgt.device)
        x = self.positional.embed(self.embed(tgt), positions)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                self.positional.rotary,
                positions,
                i,
                view,
                memory=memory,
                memory_padding_mask=src_mask,
                memory_kv=None if cache is None else (cross_k[i], cross_v[i]),
            )
        if view is not None:
            view.advance()
        return self.norm(x)

    def forward(
        self,
        x: Tensor,
        tgt: Tensor | None = None,
        targets: Tensor | None = None,
        src_mask: Tensor | None = None,
        *,
        cache: CrossKVCache | None = None,
        rows: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor | None, Tensor | None]:
        """(logits, loss).

        Training and scoring: `x` is the source (B, T), `tgt` the decoder input (B, S) and
        `src_mask` True at real source tokens. Decoding, with `cache` (the engine's call, the
        same as a decoder-only model's): `x` is the next target tokens of cache rows `rows`,
        whose sources `encode_into` stored.
        """
        if cache is not None:
            h = self.decode(x, cache=cache, rows=rows)
        else:
            h = self.decode(tgt, self.encode(x, src_mask), src_mask)
        if targets is None:
            return self.lm_head(h[:, -1:] if last_only else h).float(), None
        logits = self.lm_head(h).float()
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return None, loss

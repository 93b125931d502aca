"""Transformer layers shared by the decoder, the encoder and the encoder-decoder.

By default each block is pre-norm (RMSNorm), attention uses rotary positions and PyTorch's
scaled_dot_product_attention (flash kernels on CUDA), MLPs are SwiGLU, and no layer has a bias.
Config switches give imported families their parts from the same modules: query/key/value
biases and per-head q/k norms (Qwen), and the BERT/GPT-2 flavour: LayerNorm with a bias,
learned absolute positions (and token types), GELU MLPs, biases everywhere and post-norm.
The same attention module is causal for a decoder, bidirectional for an encoder, and
cross-attends to an encoder's output in an encoder-decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatsmith.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def norm_layer(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "layer":
        return nn.LayerNorm(dim, eps=cfg.norm_eps)
    return RMSNorm(dim, cfg.norm_eps)


class LearnedPositions(nn.Module):
    """Absolute position embeddings (and BERT's token-type embeddings) added to the input."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.types = nn.Embedding(cfg.token_types, cfg.d_model) if cfg.token_types else None

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, S, d); positions: (S,) shared or (B, S) per row."""
        x = x + self.pos(positions)
        if self.types is not None:
            x = x + self.types.weight[0]  # one segment: every token is of type 0
        return x


class Positional(nn.Module):
    """How a stack knows token order: rotary angles inside attention, or learned embeddings
    added to the input (and, for post-norm stacks, the input's normalisation)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        rope = cfg.positions == "rope"
        self.rotary = (
            Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
            if rope
            else None
        )
        self.learned = None if rope else LearnedPositions(cfg)
        # post-norm blocks end normalised, so the stack normalises its input instead
        self.input_norm = norm_layer(cfg) if cfg.post_norm else None

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.learned is not None:
            x = self.learned(x, positions)
        return self.input_norm(x) if self.input_norm is not None else x


def final_norm(cfg: ModelConfig) -> nn.Module:
    """The norm after the last block: pre-norm stacks need one, post-norm ones end normalised."""
    return nn.Identity() if cfg.post_norm else norm_layer(cfg)


class Rotary(nn.Module):
    """Rotary position embedding: rotates query/key channel pairs by position-dependent angles.

    The cos/sin tables stay float32 whatever dtype the model is cast to, as transformers keeps
    them: a bf16 model rounds them where they are used (as transformers does), and a model cast
    to bf16 and back to float32 still rotates by the exact angles.
    """

    def __init__(self, head_dim: int, max_seq_len: int, theta: float, scaling: dict | None = None):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        inv_freq = scale_frequencies(inv_freq, scaling)  # (D/2,)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def _apply(self, fn, recurse=True):
        cos, sin = self.cos, self.sin
        super()._apply(fn, recurse)
        # follow the device of a .to()/.cuda(), never the dtype
        self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: (B, H, S, D); positions: (S,) shared or (B, S) per row."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:  # (B, S, D/2) -> broadcast over heads
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def scale_frequencies(inv_freq: Tensor, scaling: dict | None) -> Tensor:
    """Stretch rotary frequencies for contexts longer than the model was first trained on.

    "linear" slows every frequency by `factor`. "llama3" (Llama 3.1+) leaves the fast
    frequencies, whose wavelength is short next to the original context, alone; slows the slow
    ones by `factor`; and blends the two linearly in between.
    """
    if scaling is None:
        return inv_freq
    factor = float(scaling["factor"])
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    context = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    slowed = torch.where(wavelen > context / low, inv_freq / factor, inv_freq)
    blend = (context / wavelen - low) / (high - low)  # 0 at the slow end, 1 at the fast end
    smoothed = (1 - blend) * slowed / factor + blend * slowed
    between = (wavelen >= context / high) & (wavelen <= context / low)
    return torch.where(between, smoothed, slowed)


class KVCache:
    """Static key/value cache with one row per sequence slot.

    Rows advance independently (each has its own length), which lets a batch of sequences of
    different lengths decode together and lets sequences join and leave between steps.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        max_seq_len: int,
        n_kv_head: int,
        head_dim: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        # one tensor per layer rather than one (n_layer, ...) tensor: a compiled decode step
        # then writes each layer's cache in place (a write into a view of one big tensor made
        # torch.compile copy the whole cache every step)
        shape = (batch_size, max_seq_len, n_kv_head, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_seq_len = max_seq_len
        # how many leading positions an all-rows pass reads (None: all of them); a caller that
        # knows every live row is shorter sets it, and attention then skips the empty tail
        self.read_span: int | None = None

    @classmethod
    def for_model(cls, cfg: ModelConfig, batch_size: int, device, dtype) -> KVCache:
        return cls(
            cfg.n_layer, batch_size, cfg.max_seq_len, cfg.n_kv_head, cfg.head_dim, device, dtype
        )

    def nbytes(self) -> int:
        """Memory held by the keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def reset(self, rows: Tensor | None = None) -> None:
        if rows is None:
            self.lengths.zero_()
        else:
            self.lengths[rows] = 0

    def copy_row(self, src: int, dst: Tensor) -> None:
        """Give the rows `dst` the keys, values and length of row `src` (a shared prompt)."""
        n = int(self.lengths[src])
        for layer in (*self.k, *self.v):  # each (batch, T, H, D)
            layer[dst, :n] = layer[src : src + 1, :n]
        self.lengths[dst] = n


class CacheView:
    """The rows of a KVCache that one forward pass reads and extends.

    With `rows=None` the pass covers every row of the cache and attends over its whole length
    under a mask: shapes are then static and nothing waits on the GPU, so the step can be
    captured in a CUDA graph. Rows not in use compute garbage that nobody reads.
    """

    def __init__(self, cache: KVCache, rows: Tensor | None, seq_len: int):
        self.cache, self.rows = cache, rows
        device = cache.lengths.device
        start = cache.lengths if rows is None else cache.lengths[rows]  # (B,)
        positions = start[:, None] + torch.arange(seq_len, device=device)  # (B, S)
        if rows is None:
            self.span = cache.read_span or cache.max_seq_len
            # idle rows keep advancing; pin them in range instead of checking on the host
            positions = positions.clamp(max=cache.max_seq_len - 1)
        else:
            self.span = int((start + seq_len).max())
            if self.span > cache.max_seq_len:
                raise ValueError(
                    f"sequence of {self.span} tokens exceeds the cache ({cache.max_seq_len})"
                )
        self.positions = positions
        keys = torch.arange(self.span, device=device)
        # query at absolute position p sees keys 0..p of its own row
        self.mask = (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, S, D) at their positions; return the row's keys/values so far."""
        ck, cv = self.cache.k[layer], self.cache.v[layer]  # (batch, T, H, D)
        if self.rows is None:
            batch = torch.arange(k.size(0), device=k.device)[:, None]
            ck[batch, self.positions] = k.transpose(1, 2).to(ck.dtype)
            cv[batch, self.positions] = v.transpose(1, 2).to(cv.dtype)
            keys, values = ck[:, : self.span].transpose(1, 2), cv[:, : self.span].transpose(1, 2)
        else:
            rows = self.rows[:, None]
            ck[rows, self.positions] = k.transpose(1, 2).to(ck.dtype)
            cv[rows, self.positions] = v.transpose(1, 2).to(cv.dtype)
            # index_select copies whole rows: several times faster than advanced indexing on
            # CPU, where this gather was a quarter of a batch-16 decode step
            keys = ck[:, : self.span].index_select(0, self.rows).transpose(1, 2)
            values = cv[:, : self.span].index_select(0, self.rows).transpose(1, 2)
        return keys.to(k.dtype), values.to(v.dtype)

    def advance(self) -> None:
        if self.rows is None:
            self.cache.lengths.copy_(self.positions[:, -1] + 1)
        else:
            self.cache.lengths[self.rows] = self.positions[:, -1] + 1


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool, cross: bool = False):
        super().__init__()
        self.causal, self.cross = causal, cross
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, q_dim, bias=cfg.qkv_bias or cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * kv_dim, bias=cfg.qkv_bias or cfg.bias)  # keys, values
        self.out = nn.Linear(q_dim, cfg.d_model, bias=cfg.bias)
        # per-head RMSNorm of queries and keys (over the head's D channels), before rotary
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def project_kv(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H_kv, T, D) of a sequence (B, T, d)."""
        B, T, _ = src.shape
        k, v = self.kv(src).view(B, T, 2, self.n_kv_head, self.head_dim).unbind(2)
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        rotary: Rotary | None,
        positions: Tensor,
        layer: int = 0,
        cache: CacheView | None = None,
        memory: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """`memory_kv`: cross-attention keys/values computed once (see `project_kv`), used
        instead of projecting `memory` again at every decoding step."""
        B, S, _ = x.shape
        q = self.q(x).view(B, S, self.n_head, self.head_dim)  # (B, S, H, D)
        if self.q_norm is not None:
            q = self.q_norm(q)
        q = q.transpose(1, 2)  # (B, H, S, D)
        if memory_kv is not None:
            k, v = memory_kv
        else:
            k, v = self.project_kv(memory if self.cross else x)
        # cross-attention keys come from another sequence: no shared positions
        if rotary is not None and not self.cross:
            q, k = rotary(q, positions), rotary(k, positions)
        mask, is_causal = None, self.causal
        if cache is not None:
            k, v = cache.update(layer, k, v)
            mask, is_causal = cache.mask, False
        elif key_padding_mask is not None:  # (B, T) True where a real token is
            mask = key_padding_mask[:, None, None, :]
            if self.causal:
                mask = mask & torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
            is_causal = False
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal,
            enable_gqa=self.n_kv_head != self.n_head,
        )
        return self.out(y.transpose(1, 2).reshape(B, S, -1))


class GeluMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Transformer block; `cross=True` adds attention to an encoder's output.

    Pre-norm (x + f(norm(x))) by default; with `post_norm`, norm(x + f(x)) as in BERT.
    """

    def __init__(self, cfg: ModelConfig, causal: bool, cross: bool = False):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.attn_norm = norm_layer(cfg)
        self.attn = Attention(cfg, causal=causal)
        self.cross_norm = norm_layer(cfg) if cross else None
        self.cross_attn = Attention(cfg, causal=False, cross=True) if cross else None
        self.mlp_norm = norm_layer(cfg)
        self.mlp = GeluMLP(cfg) if cfg.mlp == "gelu" else SwiGLU(cfg)

    def _residual(self, x: Tensor, norm: nn.Module, f) -> Tensor:
        return norm(x + f(x)) if self.post_norm else x + f(norm(x))

    def forward(
        self,
        x: Tensor,
        rotary: Rotary | None,
        positions: Tensor,
        layer: int = 0,
        cache: CacheView | None = None,
        key_padding_mask: Tensor | None = None,
        memory: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        memory_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        x = self._residual(
            x,
            self.attn_norm,
            lambda h: self.attn(
                h, rotary, positions, layer, cache, key_padding_mask=key_padding_mask
            ),
        )
        if self.cross_attn is not None:
            x = self._residual(
                x,
                self.cross_norm,
                lambda h: self.cross_attn(
                    h,
                    None,
                    positions,
                    memory=memory,
                    key_padding_mask=memory_padding_mask,
                    memory_kv=memory_kv,
                ),
            )
        return self._residual(x, self.mlp_norm, self.mlp)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 style init: N(0, 0.02), residual output projections scaled down by depth."""
    for name, p in module.named_parameters():
        if name.endswith(".bias"):
            nn.init.zeros_(p)
        if p.dim() < 2:
            continue
        std = 0.02
        if name.endswith(("out.weight", "down.weight")):
            std /= math.sqrt(2 * n_layer)
        nn.init.normal_(p, mean=0.0, std=std)

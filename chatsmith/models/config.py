"""One model config for every architecture, its size presets, and the `--depth` dial."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from chatsmith.errors import ChatsmithError
from chatsmith.validation import Field, check_record

ARCHITECTURES = ("decoder", "encoder", "encoder_decoder")
NORMS = ("rms", "layer")
POSITIONS = ("rope", "learned")
MLPS = ("swiglu", "gelu")
ROPE_SCALINGS = ("llama3", "linear")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # fewer than n_head gives grouped-query attention
    d_model: int = 256
    d_ff: int = 0  # 0: derived as the SwiGLU width closest to 4x d_model in parameters
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    arch: str = "decoder"
    n_decoder_layer: int = 0  # encoder_decoder only; 0 means same as n_layer
    # switches that imported models need; each default is chatsmith's own architecture
    norm_eps: float = 1e-6  # RMSNorm / LayerNorm epsilon
    head_size: int = 0  # 0: d_model // n_head; otherwise heads may be wider or narrower
    qkv_bias: bool = False  # biases on the query/key/value projections (Qwen2)
    qk_norm: bool = False  # RMSNorm on each query/key head before rotary (Qwen3)
    # None: plain rotary; {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"} or {"rope_type": "linear", "factor"}
    rope_scaling: dict | None = None
    # block flavour: chatsmith's own is pre-norm RMSNorm, rotary, SwiGLU, no biases; the
    # BERT/GPT-2 family is LayerNorm with bias, learned absolute positions, GELU, biases
    norm: str = "rms"  # "rms" or "layer" (LayerNorm with a bias)
    post_norm: bool = False  # normalise after each residual add (BERT, the 2017 Transformer)
    positions: str = "rope"  # "rope" or "learned" (absolute position embeddings)
    token_types: int = 0  # learned token-type (segment) embeddings, BERT's; 0: none
    mlp: str = "swiglu"  # "swiglu" or "gelu" (two matrices, exact erf GELU)
    bias: bool = False  # biases on every linear layer (qkv_bias alone: only q/k/v)

    def __post_init__(self) -> None:
        check_record(asdict(self), _FIELDS, "model config")
        if self.d_ff == 0 and self.mlp == "gelu":
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        elif self.d_ff == 0:
            # SwiGLU has three matrices, so 8/3 x width matches a 4x two-matrix MLP; round to 32.
            object.__setattr__(self, "d_ff", ((8 * self.d_model // 3) + 31) // 32 * 32)
        self.validate()

    def validate(self) -> None:
        check_record(self.to_dict(), _FIELDS, "model config")
        if self.arch not in ARCHITECTURES:
            raise ChatsmithError(f"unknown architecture {self.arch!r}; choose from {ARCHITECTURES}")
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ChatsmithError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.head_size and self.d_model % self.n_head:
            raise ChatsmithError(
                f"{self.n_head} heads do not divide width {self.d_model}: "
                "choose n_head so that d_model / n_head is a whole number"
            )
        if self.n_head % self.n_kv_head:
            raise ChatsmithError(
                f"n_kv_head {self.n_kv_head} must divide n_head {self.n_head} "
                "(grouped-query attention shares each key/value head among whole groups)"
            )
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ChatsmithError(
                    f"unknown {name} {getattr(self, name)!r}; choose from {allowed}"
                )
        if self.positions == "rope" and self.head_dim % 2:
            raise ChatsmithError(f"head size {self.head_dim} must be even for rotary positions")
        if self.norm_eps <= 0:
            raise ChatsmithError(f"norm_eps must be positive, got {self.norm_eps}")
        kind = (self.rope_scaling or {}).get("rope_type")
        if self.rope_scaling is not None and kind not in ROPE_SCALINGS:
            raise ChatsmithError(
                f"unknown rope scaling {kind!r}; supported: {', '.join(ROPE_SCALINGS)}"
            )

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        check_record(d, {}, "model config")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ChatsmithError(f"unknown model config fields {sorted(unknown)}")
        return cls(**d)


# Upper bounds keep a damaged or hand-edited config from allocating the machine away (the
# rotary table and KV cache grow with max_seq_len); they sit far above every preset.
_LIMITS = {
    "vocab_size": 1 << 20,
    "n_layer": 1024,
    "n_head": 1024,
    "n_kv_head": 1024,
    "d_model": 1 << 16,
    "d_ff": 1 << 18,
    "max_seq_len": 1 << 17,
    "n_decoder_layer": 1024,
    "token_types": 1024,
}
# each field's kind is that of its default (int, float, bool or str)
_FIELDS = {
    f.name: Field(type(f.default), lo=0 if f.name in _LIMITS else None, hi=_LIMITS.get(f.name))
    for f in fields(ModelConfig)
}
_FIELDS["rope_theta"] = Field(float, lo=1.0)
_FIELDS["rope_scaling"] = Field(dict, optional=True)


# width = 64 x depth and 64-wide heads, the nanochat-style single dial; presets name common points.
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=2, n_kv_head=2, d_model=64, max_seq_len=128),
    # the pretraining default: best held-out bits per byte found for 5 minutes on 2 CPU cores
    "narrow": dict(n_layer=4, n_head=2, n_kv_head=2, d_model=128, max_seq_len=256),
    "mini": dict(n_layer=4, n_head=4, n_kv_head=4, d_model=256, max_seq_len=256),
    "small": dict(n_layer=6, n_head=6, n_kv_head=6, d_model=384, max_seq_len=512),
    "base": dict(n_layer=8, n_head=8, n_kv_head=8, d_model=512, max_seq_len=1024),
    "gpt2-small": dict(n_layer=12, n_head=12, n_kv_head=12, d_model=768, max_seq_len=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_kv_head=16, d_model=1024, max_seq_len=1024),
}


def config_from_depth(depth: int, **overrides) -> ModelConfig:
    """The one dial: depth sets the layer count, width (64 per layer) and heads (64 wide)."""
    if depth < 1:
        raise ChatsmithError(f"--depth must be at least 1, got {depth}")
    base = dict(n_layer=depth, n_head=depth, n_kv_head=depth, d_model=64 * depth)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**base)


def config_from_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ChatsmithError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    base = dict(PRESETS[name])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**base)

"""Hugging Face config.json <-> ModelConfig, refusing what chatsmith's layers cannot compute.

Supported: the Llama layout (llama, mistral without an active sliding window), qwen2 (q/k/v
biases) and qwen3 (per-head q/k RMSNorm). Every field that would change the computation and
that chatsmith does not implement is refused by name, so an import never silently differs.
"""

from __future__ import annotations

from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_CONTEXT_CAP = 4096  # positions allocated on import unless --max-seq-len says otherwise
# keys that mean mixture-of-experts layers, whatever the family calls them
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
EXPORT_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


def _need(cfg: dict, key: str):
    if key not in cfg:
        raise ChatsmithError(f"config.json lacks {key!r}")
    return cfg[key]


def rope_settings(cfg: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from either transformers 4 (`rope_theta`, `rope_scaling`) or 5
    (`rope_parameters`) spelling."""
    params = dict(cfg.get("rope_parameters") or {})
    legacy = cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = {**legacy, **params}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, {"rope_type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        missing = [k for k in keys if k not in scaling]
        if missing:
            raise ChatsmithError(f"config.json: llama3 rope scaling lacks {missing}")
        return theta, {"rope_type": "llama3", **{k: float(scaling[k]) for k in keys}}
    raise ChatsmithError(
        f"config.json: unsupported rope scaling {kind!r} (supported: default, linear, llama3)"
    )


def _refuse_unsupported(cfg: dict, family: str, context: int) -> None:
    for key in MOE_KEYS:
        if cfg.get(key):
            raise ChatsmithError(
                f"config.json: {key}={cfg[key]} (mixture of experts) is not supported"
            )
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ChatsmithError(f"config.json: hidden_act={act!r} is not supported (only silu)")
    if cfg.get("mlp_bias"):
        raise ChatsmithError("config.json: mlp_bias=true is not supported")
    if family in ("llama", "mistral", "qwen3") and cfg.get("attention_bias"):
        raise ChatsmithError(
            "config.json: attention_bias=true (a bias on the output projection too) "
            "is not supported"
        )
    if cfg.get("use_sliding_window"):
        raise ChatsmithError("config.json: use_sliding_window=true is not supported")
    window = cfg.get("sliding_window")
    # a window at least as long as the context never hides a key: the model is then exact
    if family == "mistral" and window is not None and window < context:
        raise ChatsmithError(
            f"config.json: sliding_window={window} is shorter than the context {context}; "
            f"sliding-window attention is not supported (use --max-seq-len {window} or less)"
        )
    kinds = set(cfg.get("layer_types") or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ChatsmithError(f"config.json: layer_types {sorted(kinds)} are not supported")


def model_config_from_hf(cfg: dict, max_seq_len: int | None = None) -> ModelConfig:
    """The ModelConfig that computes what `cfg` (a parsed config.json) describes."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ChatsmithError(
            f"config.json: model_type {family!r} is not supported "
            f"(supported: {', '.join(FAMILIES)})"
        )
    positions = int(_need(cfg, "max_position_embeddings"))
    context = min(positions, DEFAULT_CONTEXT_CAP) if max_seq_len is None else max_seq_len
    if context < 1 or context > positions:
        raise ChatsmithError(
            f"--max-seq-len {context} must be between 1 and the model's {positions} positions"
        )
    _refuse_unsupported(cfg, family, context)
    d_model, n_head = int(_need(cfg, "hidden_size")), int(_need(cfg, "num_attention_heads"))
    head_dim = int(cfg.get("head_dim") or d_model // n_head)
    theta, scaling = rope_settings(cfg)
    return ModelConfig(
        vocab_size=int(_need(cfg, "vocab_size")),
        n_layer=int(_need(cfg, "num_hidden_layers")),
        n_head=n_head,
        n_kv_head=int(cfg.get("num_key_value_heads") or n_head),
        d_model=d_model,
        d_ff=int(_need(cfg, "intermediate_size")),
        max_seq_len=context,
        rope_theta=theta,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        head_size=0 if head_dim * n_head == d_model else head_dim,
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        rope_scaling=scaling,
    )


def export_family(cfg: ModelConfig) -> str:
    """The HF layout that holds `cfg`: plain Llama unless q/k/v biases or q/k norms need more."""
    if cfg.arch != "decoder":
        raise ChatsmithError(
            f"cannot export an {cfg.arch} run to Hugging Face: only decoder runs have an HF layout"
        )
    if cfg.qkv_bias and cfg.qk_norm:
        raise ChatsmithError("cannot export: no HF layout has both q/k/v biases and q/k norms")
    return "qwen2" if cfg.qkv_bias else "qwen3" if cfg.qk_norm else "llama"


def hf_config_from_model(cfg: ModelConfig, special: dict[str, int | None]) -> dict:
    """config.json for `cfg` in the layout `export_family` picks.

    `special` holds bos_token_id / eos_token_id / pad_token_id. Both the transformers 4
    (`rope_theta`, `rope_scaling`) and 5 (`rope_parameters`) spellings are written.
    """
    family = export_family(cfg)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope = {**cfg.rope_scaling, "rope_theta": cfg.rope_theta}
    out = {
        "architectures": [EXPORT_ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
        **special,
    }
    if cfg.rope_scaling:
        out["rope_scaling"] = dict(cfg.rope_scaling)
    if family != "llama":
        out.update(use_sliding_window=False, sliding_window=None)
        del out["attention_bias"], out["mlp_bias"]
    if family == "qwen3":
        out["attention_bias"] = False
    return out

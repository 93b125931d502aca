"""Tensor names and layouts: Hugging Face's Llama/Qwen layout <-> chatsmith's Decoder.

chatsmith fuses keys with values (`attn.kv`, keys first) and gate with up (`mlp.gate_up`,
gate first); the rotary layout is the same "rotate half" one, so no head permutation is needed.
"""

from __future__ import annotations

import torch

from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig

Tensors = dict[str, torch.Tensor]

# per-layer one-to-one renames, HF suffix -> chatsmith suffix
_LAYER_RENAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "self_attn.q_proj.weight": "attn.q.weight",
    "self_attn.q_proj.bias": "attn.q.bias",
    "self_attn.o_proj.weight": "attn.out.weight",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
    "mlp.down_proj.weight": "mlp.down.weight",
}
# fused chatsmith tensors, made of HF parts concatenated along the output dimension
_LAYER_FUSED = {
    "attn.kv.weight": ("self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.kv.bias": ("self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "mlp.gate_up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def expected_hf_names(cfg: ModelConfig) -> list[str]:
    """Every HF tensor name a model with `cfg` has (lm_head only when untied)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    per_layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ]
    if cfg.qkv_bias:
        per_layer += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    if cfg.qk_norm:
        per_layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    names += [f"model.layers.{i}.{s}" for i in range(cfg.n_layer) for s in per_layer]
    return names


def from_hf(hf: Tensors, cfg: ModelConfig) -> Tensors:
    """chatsmith Decoder weights from HF ones; `hf` must hold exactly `expected_hf_names`."""
    want = set(expected_hf_names(cfg))
    missing = sorted(want - set(hf))
    if missing:
        raise ChatsmithError(f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
    extra = sorted(set(hf) - want - {"lm_head.weight"})  # a tied model may still store the head
    if extra:
        raise ChatsmithError(
            f"the checkpoint has {len(extra)} tensors this config does not explain, e.g. {extra[0]}"
        )
    out = {"embed.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = hf["lm_head.weight"]
    for i in range(cfg.n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        for theirs, ours in _LAYER_RENAMES.items():
            if src + theirs in hf:
                out[dst + ours] = hf[src + theirs]
        for ours, parts in _LAYER_FUSED.items():
            if src + parts[0] in hf:
                out[dst + ours] = torch.cat([hf[src + p] for p in parts], dim=0)
    return out


def to_hf(ours: Tensors, cfg: ModelConfig) -> Tensors:
    """HF weights from a chatsmith Decoder's state dict (fused tensors split back)."""
    out = {
        "model.embed_tokens.weight": ours["embed.weight"],
        "model.norm.weight": ours["norm.weight"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = ours["lm_head.weight"]
    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        for theirs, mine in _LAYER_RENAMES.items():
            if src + mine in ours:
                out[dst + theirs] = ours[src + mine]
        for mine, parts in _LAYER_FUSED.items():
            if src + mine in ours:
                pieces = ours[src + mine].chunk(2, dim=0)  # k|v and gate|up are equal halves
                out.update({dst + p: t for p, t in zip(parts, pieces)})
    return {k: v.contiguous() for k, v in out.items()}

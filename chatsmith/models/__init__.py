"""Models are plain nn.Modules built from one ModelConfig; nothing here imports the rest."""

from __future__ import annotations

from torch import nn

from chatsmith.models.config import PRESETS, ModelConfig, config_from_depth, config_from_preset
from chatsmith.models.decoder import IGNORE_INDEX, Decoder
from chatsmith.models.layers import KVCache

__all__ = [
    "IGNORE_INDEX",
    "PRESETS",
    "Decoder",
    "KVCache",
    "ModelConfig",
    "build_model",
    "config_from_depth",
    "config_from_preset",
    "format_card",
    "model_card",
]


def build_model(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "decoder":
        return Decoder(cfg)
    if cfg.arch == "encoder":
        from chatsmith.models.encoder import Encoder

        return Encoder(cfg)
    from chatsmith.models.encoder_decoder import EncoderDecoder

    return EncoderDecoder(cfg)


def model_card(cfg: ModelConfig, model: nn.Module, kv_bytes_per_value: int = 2) -> dict:
    """Parameters, training FLOPs per token and KV-cache bytes per token.

    FLOPs follow the usual accounting (Kaplan et al. 2020, PaLM appendix B): 6 per non-embedding
    weight for forward+backward, plus 12 * layers * width * context for attention scores.
    """
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = cfg.vocab_size * cfg.d_model
    matmul_params = n_params - n_embed + (n_embed if cfg.tie_embeddings else 0)
    flops = 6 * matmul_params + 12 * cfg.n_layer * cfg.d_model * cfg.max_seq_len
    kv = 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim * kv_bytes_per_value
    return {
        "parameters": n_params,
        "non_embedding_parameters": n_params - n_embed,
        "flops_per_token": flops,
        "kv_cache_bytes_per_token": kv,
        "layers": cfg.n_layer,
        "width": cfg.d_model,
        "heads": f"{cfg.n_head} ({cfg.n_kv_head} kv)",
        "context": cfg.max_seq_len,
        "vocab": cfg.vocab_size,
    }


def format_card(card: dict) -> str:
    return (
        f"model: {card['parameters'] / 1e6:.2f}M parameters "
        f"({card['non_embedding_parameters'] / 1e6:.2f}M non-embedding), {card['layers']} layers, "
        f"width {card['width']}, heads {card['heads']}, context {card['context']}, "
        f"vocab {card['vocab']} | {card['flops_per_token'] / 1e6:.1f} MFLOPs/token to train | "
        f"KV cache {card['kv_cache_bytes_per_token']:,} bytes/token (bf16)"
    )

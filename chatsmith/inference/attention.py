"""Attention weights of a decoder on a text, for looking at, without touching the model's forward.

The model computes attention inside scaled_dot_product_attention (fused kernels that never
materialise the weights), and it should stay that way: a flag in the forward would cost every
other caller. Instead, for the length of one call, a forward pre-hook on each attention module
receives that module's own inputs (the normalised hidden states, the rotary table and the
positions), re-runs its query and key projections and forms softmax(QK^T / sqrt(d)) under the
causal mask: the same weights the fused kernel applies. The hooks are removed afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import Tokenizer


@dataclass
class AttentionMaps:
    tokens: list[str]  # one label per position
    weights: Tensor  # (layers, heads, S, S): row i is how position i spreads its attention


def self_attention_weights(
    attn: nn.Module, x: Tensor, rotary: nn.Module, positions: Tensor
) -> Tensor:
    """softmax(QK^T / sqrt(d)) of one attention module for its input x (B, S, d_model).

    Returns (B, n_head, S, S). Grouped-query key heads are repeated as
    scaled_dot_product_attention(enable_gqa=True) does (each serves a run of adjacent heads).
    """
    B, S, _ = x.shape
    q = attn.q(x).view(B, S, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, H, S, D)
    k = attn.kv(x).view(B, S, 2, attn.n_kv_head, attn.head_dim)[:, :, 0].transpose(1, 2)
    q, k = rotary(q, positions), rotary(k, positions)  # k: (B, Hkv, S, D)
    k = k.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # (B, H, S, D)
    scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(attn.head_dim)  # (B, H, S, S)
    if attn.causal:
        future = torch.ones(S, S, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1)


def token_labels(tok: Tokenizer, ids: list[int]) -> list[str]:
    labels = []
    for i in ids:
        if i in tok.special_ids:
            labels.append(tok.hf.id_to_token(i))
        else:
            labels.append(tok.token_bytes(i).decode("utf-8", errors="replace").replace(" ", "·"))
    return labels


@torch.no_grad()  # not inference_mode: the weights stay ordinary tensors for the caller
def attention_maps(model: nn.Module, tok: Tokenizer, text: str) -> AttentionMaps:
    """Every layer's and head's attention weights over `text` (preceded by the BOS token)."""
    cfg = model.cfg
    if cfg.arch != "decoder":
        raise ChatsmithError(f"attention maps are drawn for decoder runs; this run is {cfg.arch}")
    ids = [tok.bos_id, *tok.encode(text)]
    if len(ids) > cfg.max_seq_len:
        raise ChatsmithError(
            f"the text has {len(ids)} tokens; the model's context is {cfg.max_seq_len}"
        )
    if len(ids) < 2:
        raise ChatsmithError("give some --text to draw attention over")
    found: dict[int, Tensor] = {}

    def capture(layer: int):
        def hook(module, args, kwargs):
            x, rotary, positions = args[:3]
            found[layer] = self_attention_weights(module, x, rotary, positions)[0]

        return hook

    handles = [
        block.attn.register_forward_pre_hook(capture(i), with_kwargs=True)
        for i, block in enumerate(model.blocks)
    ]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.tensor([ids], device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    weights = torch.stack([found[i] for i in range(len(model.blocks))]).cpu()
    return AttentionMaps(token_labels(tok, ids), weights)

"""Attention maps: the weights the model really applies, causal rows that sum to 1, a PNG."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli
from test_cli import assert_clean_error

from chatsmith.errors import ChatsmithError
from chatsmith.evaluation.attention_plot import plot_attention
from chatsmith.inference.attention import attention_maps
from chatsmith.inference.loading import load_run
from chatsmith.models import ModelConfig, build_model

TEXT = "The animal didn't cross the street because it was too tired"


def attention_outputs(model, ids):
    """Each layer's attention input and output, as the model's own forward computes them."""
    seen = {}
    hooks = [
        b.attn.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, (a[0], out)))
        for i, b in enumerate(model.blocks)
    ]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return seen


def check_maps_reproduce_attention(model, tok):
    maps = attention_maps(model, tok, TEXT)
    ids = [tok.bos_id, *tok.encode(TEXT)]
    S, cfg = len(ids), model.cfg
    assert maps.weights.shape == (cfg.n_layer, cfg.n_head, S, S)
    assert len(maps.tokens) == S and maps.tokens[0] == "<|bos|>"
    assert torch.allclose(maps.weights.sum(-1), torch.ones(cfg.n_layer, cfg.n_head, S))
    assert (maps.weights.triu(1) == 0).all()  # no position sees a later one
    for layer, (x, out) in attention_outputs(model, ids).items():
        attn = model.blocks[layer].attn
        v = attn.kv(x).view(1, S, 2, cfg.n_kv_head, cfg.head_dim)[:, :, 1].transpose(1, 2)
        v = v.repeat_interleave(cfg.n_head // cfg.n_kv_head, dim=1)  # (1, H, S, D)
        y = (maps.weights[layer][None] @ v).transpose(1, 2).reshape(1, S, -1)
        assert torch.allclose(attn.out(y), out, atol=1e-5), f"layer {layer}"
    return maps


@pytest.fixture(scope="module")
def run(tiny_run):
    return load_run(tiny_run, "cpu")


def test_weights_are_the_ones_the_trained_model_applies(run, tmp_path):
    maps = check_maps_reproduce_attention(run.model, run.tokenizer)
    out = plot_attention(maps, tmp_path / "a" / "attn.png", layer=0, head=1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ChatsmithError, match="--head must be between 0 and 1"):
        plot_attention(maps, tmp_path / "b.png", head=2)


def test_grouped_query_heads_map_like_the_fused_kernel(run):
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=run.tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=32
    )
    model = build_model(cfg)
    for p in model.parameters():  # larger weights than the init: attention far from uniform
        p.data.mul_(8)
    check_maps_reproduce_attention(model, run.tokenizer)


def test_text_longer_than_the_context(run):
    with pytest.raises(ChatsmithError, match="context is 64"):
        attention_maps(run.model, run.tokenizer, "hello there " * 100)


@pytest.mark.slow
def test_attention_command(tiny_run, tmp_path):
    out = tmp_path / "attn.png"
    proc = run_cli("attention", str(tiny_run), "--text", TEXT, "--out", str(out), "--head", "1")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli("attention", str(tiny_run), "--text", TEXT, "--layer", "7")
    assert_clean_error(bad, "--layer must be between 0 and 1")

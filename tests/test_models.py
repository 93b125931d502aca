"""Model properties: causality, KV-cache equivalence, config validation and the size card."""

from __future__ import annotations

import pytest
import torch

from chatsmith.errors import ChatsmithError
from chatsmith.models import (
    KVCache,
    ModelConfig,
    build_model,
    config_from_depth,
    config_from_preset,
    model_card,
)


def tiny_model(**over) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=97,
        n_layer=2,
        n_head=4,
        n_kv_head=over.pop("n_kv_head", 4),
        d_model=32,
        max_seq_len=32,
        **over,
    )
    return build_model(cfg).eval()


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_is_causal(n_kv_head):
    model = tiny_model(n_kv_head=n_kv_head)
    x = torch.randint(0, 97, (2, 16))
    logits, _ = model(x)
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 97
    logits2, _ = model(changed)
    # positions before the change cannot see it; the changed position itself must differ
    assert torch.allclose(logits[:, :10], logits2[:, :10], atol=1e-5)
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:], atol=1e-3)


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_kv_cache_matches_full_recompute(n_kv_head):
    model = tiny_model(n_kv_head=n_kv_head)
    x = torch.randint(0, 97, (3, 20))
    full, _ = model(x)
    cache = KVCache.for_model(model.cfg, 3, "cpu", torch.float32)
    prefix, _ = model(x[:, :7], cache=cache)
    steps = [prefix]
    for i in range(7, 20):
        step, _ = model(x[:, i : i + 1], cache=cache)
        steps.append(step)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-4)


def test_cache_rows_advance_independently():
    """Two sequences of different lengths in one cache decode as if each were alone."""
    model = tiny_model()
    a, b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 4))
    ref_a, _ = model(a)
    ref_b, _ = model(b)
    cache = KVCache.for_model(model.cfg, 2, "cpu", torch.float32)
    model(a[:, :8], cache=cache, rows=torch.tensor([0]))
    model(b[:, :3], cache=cache, rows=torch.tensor([1]))
    both, _ = model(torch.stack([a[0, 8:9], b[0, 3:4]]), cache=cache, rows=torch.tensor([0, 1]))
    assert torch.allclose(both[0, -1], ref_a[0, -1], atol=1e-4)
    assert torch.allclose(both[1, -1], ref_b[0, -1], atol=1e-4)


def test_loss_ignores_masked_targets():
    model = tiny_model()
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    _, per_token = model(x, y, reduction="none")
    masked = y.clone()
    masked[:, :6] = -1
    _, loss = model(x, masked)
    assert torch.allclose(loss, per_token[:, 6:].mean(), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=30, n_head=4, n_kv_head=4), "do not divide width"),
        (dict(d_model=32, n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(n_layer=0), "n_layer must be positive"),
        (dict(arch="rnn"), "unknown architecture"),
    ],
)
def test_impossible_sizes_are_refused(kwargs, message):
    with pytest.raises(ChatsmithError, match=message):
        ModelConfig(**kwargs)


def test_presets_and_depth_dial():
    cfg = config_from_depth(12, vocab_size=50304, max_seq_len=1024)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.head_dim) == (12, 768, 12, 64)
    assert config_from_preset("gpt2-small").d_model == 768
    with pytest.raises(ChatsmithError, match="unknown preset"):
        config_from_preset("huge")


def test_model_card_counts_match_the_module():
    cfg = config_from_preset("tiny", vocab_size=512)
    model = build_model(cfg)
    card = model_card(cfg, model)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    # K and V, per layer, per kv head, head_dim values of 2 bytes each
    assert card["kv_cache_bytes_per_token"] == 2 * 2 * cfg.n_layer * cfg.n_kv_head * cfg.head_dim
    # 6 FLOPs per matmul weight dominates; attention adds 12 * L * d * T
    assert card["flops_per_token"] > 6 * card["non_embedding_parameters"]


def test_sequence_longer_than_context_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))

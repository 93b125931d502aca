"""The encoder and the encoder-decoder reuse the shared layers and train in the shared loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_flags

from chatsmith.data.tokens import TokenWindows
from chatsmith.models import ModelConfig, build_model
from chatsmith.reporting import Reporter
from chatsmith.training.config import TrainConfig
from chatsmith.training.loop import train
from chatsmith.training.masked_lm import MaskedLM
from chatsmith.training.metrics import read_metrics
from chatsmith.training.seq2seq import Seq2Seq

VOCAB = 40


def cfg(arch: str, **over) -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB,
        n_layer=2,
        n_head=2,
        n_kv_head=2,
        d_model=32,
        max_seq_len=32,
        arch=arch,
        **over,
    )


BERT_FLAVOUR = dict(
    norm="layer", post_norm=True, positions="learned", token_types=2, mlp="gelu", bias=True
)


@pytest.mark.parametrize("flavour", [{}, BERT_FLAVOUR], ids=["chatsmith", "bert"])
def test_encoder_sees_both_directions_and_ignores_padding(flavour):
    torch.manual_seed(0)
    model = build_model(cfg("encoder", **flavour)).eval()
    x = torch.randint(1, VOCAB, (1, 12))
    base, _ = model(x)
    later = x.clone()
    later[0, 11] = (later[0, 11] + 1) % VOCAB
    changed, _ = model(later)
    assert not torch.allclose(base[0, 0], changed[0, 0], atol=1e-4)  # token 0 saw token 11

    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 8:] = False
    a, _ = model(x, padding_mask=mask)
    b, _ = model(later, padding_mask=mask)
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-5)  # padding is invisible


def test_encoder_decoder_is_causal_on_the_target_and_reads_the_source():
    torch.manual_seed(0)
    model = build_model(cfg("encoder_decoder", n_decoder_layer=1)).eval()
    src, tgt = torch.randint(1, VOCAB, (1, 7)), torch.randint(1, VOCAB, (1, 9))
    base, _ = model(src, tgt)
    tgt2 = tgt.clone()
    tgt2[0, 6] = (tgt2[0, 6] + 1) % VOCAB
    assert torch.allclose(base[0, :6], model(src, tgt2)[0][0, :6], atol=1e-5)
    src2 = src.clone()
    src2[0, 3] = (src2[0, 3] + 1) % VOCAB
    assert not torch.allclose(base[0, 0], model(src2, tgt)[0][0, 0], atol=1e-4)


def losses(run) -> list[float]:
    return [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]


def test_masked_lm_trains_in_the_shared_loop(tmp_path):
    torch.manual_seed(0)
    # every token comes twice in a row: a masked token is best guessed from its twin
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(2, VOCAB, (2500,), generator=g).repeat_interleave(2)
    model_cfg = cfg("encoder")
    objective = MaskedLM(
        TokenWindows(tokens, 32, 16, 0),
        tokens[:800],
        mask_id=1,
        device=torch.device("cpu"),
        seed=0,
    )
    settings = TrainConfig(batch_size=16, lr=1e-2, warmup_steps=5, eval_every=50, log_every=5)
    train(
        build_model(model_cfg),
        model_cfg,
        objective,
        settings,
        tiny_flags(tmp_path, 150),
        {"stage": "masked-lm"},
        Reporter(quiet=True),
    )
    vals = losses(tmp_path)
    uniform = math.log(VOCAB - 2)
    assert vals[-1] < uniform - 0.2 and vals[-1] < vals[0] - 0.15
    accuracy = [
        r["val_accuracy"] for r in read_metrics(tmp_path / "metrics.jsonl") if "val_accuracy" in r
    ]
    assert accuracy[-1] > 2 / (VOCAB - 2)  # twice chance


def test_seq2seq_learns_to_reverse(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(300):
        s = torch.randint(3, VOCAB, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g)
        pairs.append((s.tolist(), s.flip(0).tolist()))
    model_cfg = cfg("encoder_decoder")
    objective = Seq2Seq(
        pairs[:260], pairs[260:], bos_id=1, pad_id=0, batch_size=16, device=torch.device("cpu")
    )
    settings = TrainConfig(batch_size=16, lr=3e-3, warmup_steps=5, eval_every=30, log_every=5)
    train(
        build_model(model_cfg),
        model_cfg,
        objective,
        settings,
        tiny_flags(tmp_path, 120),
        {"stage": "seq2seq"},
        Reporter(quiet=True),
    )
    vals = losses(tmp_path)
    uniform = math.log(VOCAB - 3)
    assert vals[-1] < uniform - 0.5 and vals[-1] < vals[0] - 0.3


def test_encoder_decoder_cached_decoding_equals_recomputation():
    """Encoder once, cross keys/values cached: each step's logits match a full forward pass,
    for rows of different source lengths decoding together."""
    torch.manual_seed(0)
    model = build_model(cfg("encoder_decoder", n_decoder_layer=3)).eval()
    sources = [torch.randint(3, VOCAB, (n,)) for n in (5, 9, 3)]
    targets = torch.randint(3, VOCAB, (3, 10))
    cache = model.new_cache(4, "cpu", torch.float32)
    slots = torch.tensor([3, 0, 2])
    with torch.no_grad():
        for slot, src in zip(slots, sources):
            model.encode_into(cache, slot[None], src[None])
        stepped = torch.cat(
            [model(targets[:, t : t + 1], cache=cache, rows=slots)[0] for t in range(10)], dim=1
        )
        for i, src in enumerate(sources):
            full, _ = model(src[None], targets[i : i + 1])
            assert torch.allclose(stepped[i], full[0], atol=1e-5)
            # a padded (masked) source gives the same logits
            padded = torch.cat([src, torch.zeros(4, dtype=torch.long)])[None]
            mask = (torch.arange(padded.size(1)) < len(src))[None]
            assert torch.allclose(
                model(padded, targets[i : i + 1], src_mask=mask)[0], full, atol=1e-5
            )


def test_engine_greedy_encoder_decoder_equals_uncached_greedy():
    from chatsmith.inference.engine import Engine, SamplingParams

    torch.manual_seed(1)
    model = build_model(cfg("encoder_decoder")).eval()
    sources = [torch.randint(3, VOCAB, (n,)).tolist() for n in (4, 11)]
    engine = Engine(model, stop_ids=[], max_batch=2, start_id=1)
    seqs = engine.generate_many(sources, SamplingParams(max_tokens=8, temperature=0))
    for src, seq in zip(sources, seqs):
        tgt = [1]
        with torch.no_grad():
            for _ in range(8):  # recompute everything for every new token
                logits, _ = model(torch.tensor([src]), torch.tensor([tgt]))
                tgt.append(int(logits[0, -1].argmax()))
        assert seq.tokens == tgt[1:]


def test_encoder_decoder_static_all_rows_step_matches_rows_step():
    """The all-rows decode step (the one CUDA graphs replay) gives the per-row step's logits."""
    from chatsmith.inference.static_decode import StaticDecodeStep

    torch.manual_seed(0)
    model = build_model(cfg("encoder_decoder")).eval()
    src = torch.randint(3, VOCAB, (1, 6))
    with torch.no_grad():
        a, b = model.new_cache(2, "cpu", torch.float32), model.new_cache(3, "cpu", torch.float32)
        rows_a, rows_b = torch.tensor([1]), torch.tensor([2])
        model.encode_into(a, rows_a, src)
        model.encode_into(b, rows_b, src)
        static = StaticDecodeStep(model, b, use_graph=False)
        for token in (1, 7, 9, 4):
            want = model(torch.tensor([[token]]), cache=a, rows=rows_a, last_only=True)[0][0, -1]
            got = static([2], [token])[0][0]
            assert torch.allclose(want, got, atol=1e-5)

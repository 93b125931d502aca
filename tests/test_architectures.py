"""The encoder and the encoder-decoder reuse the shared layers and train in the shared loop."""

from __future__ import annotations

import math

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


def test_encoder_sees_both_directions_and_ignores_padding():
    torch.manual_seed(0)
    model = build_model(cfg("encoder")).eval()
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
        TokenWindows(tokens[:800], 32, 16, 1),
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
    assert vals[-1] < uniform - 0.2 and vals[-1] < vals[0] - 0.2


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

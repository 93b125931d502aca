"""Training precision and the per-step host work: bf16 autocast on the CPU trains and resumes
exactly, losses are read back only at the steps that need them, and a non-finite one still
stops the run with a clear error before anything is saved."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from conftest import run_cli, tiny_args, tiny_flags
from safetensors.torch import load_file

from chatsmith.checkpoint import latest_checkpoint_dir
from chatsmith.errors import ChatsmithError
from chatsmith.reporting import Reporter
from chatsmith.runtime import autocast, autocast_dtype, cpu_has_native_bf16
from chatsmith.training import pretrain as pretrain_mod
from chatsmith.training.config import PretrainConfig, RunConfig
from chatsmith.training.metrics import read_metrics
from chatsmith.training.pretrain import pretrain

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_precision_choice():
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert autocast_dtype(CUDA, "auto") is torch.bfloat16
    assert autocast_dtype(CUDA, "fp32") is None
    native = torch.bfloat16 if cpu_has_native_bf16() else None
    assert autocast_dtype(CPU, "auto") is native
    # inference and evaluation keep their default: full precision on the CPU
    assert isinstance(autocast(CPU), contextlib.nullcontext)
    with pytest.raises(ChatsmithError, match="unknown precision"):
        autocast_dtype(CPU, "fp16")
    with pytest.raises(ChatsmithError, match="unknown precision"):
        PretrainConfig(precision="fp16")


def test_unknown_precision_is_a_one_line_error(tmp_path):
    proc = run_cli("pretrain", "--precision", "fp8", "--max-steps", "1", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: unknown precision 'fp8'")
    assert "Traceback" not in proc.stderr


def test_compile_default_follows_the_budget():
    config = PretrainConfig()

    def run(device, minutes=None, steps=None):
        return RunConfig(out="x", max_minutes=minutes, max_steps=steps, device=device)

    assert config.use_compile(run(CUDA, steps=10))
    assert not config.use_compile(run(CPU, steps=10_000))  # a step budget: no compile
    assert not config.use_compile(run(CPU, minutes=1))  # too short to pay back compiling
    assert PretrainConfig(compile=False).use_compile(run(CUDA, minutes=5)) is False
    assert PretrainConfig(compile=True).use_compile(run(CPU, steps=5)) is True


def _weights(run) -> dict:
    return load_file(str(latest_checkpoint_dir(run) / "model.safetensors"))


def test_bf16_autocast_on_cpu_trains_and_resumes_exactly(corpus, tmp_path, one_thread):
    args = tiny_args(corpus, precision="bf16", save_every=10, eval_every=1000)
    straight = tmp_path / "straight"
    pretrain(args, tiny_flags(straight, 20), Reporter(quiet=True))
    losses = [r["loss"] for r in read_metrics(straight / "metrics.jsonl") if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5

    # the same run in two parts: stopped by its own step budget at 10, resumed to 20, would
    # change the schedule; so stop it by running out of batches right after step 10's save
    split = tmp_path / "split"
    real_next, calls = pretrain_mod.LanguageModeling.next_batch, {"n": 0}

    def stopping_next(self, model):
        calls["n"] += 1
        if calls["n"] > 11:
            raise KeyboardInterrupt
        return real_next(self, model)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain_mod.LanguageModeling, "next_batch", stopping_next)
        with pytest.raises(KeyboardInterrupt):
            pretrain(args, tiny_flags(split, 20), Reporter(quiet=True))
    pretrain(args, tiny_flags(split, 20, resume=True), Reporter(quiet=True))
    a, b = _weights(straight), _weights(split)
    assert all((a[k] == b[k]).all() for k in a)

    # and autocast really ran: full precision takes other steps from the same start
    fp32 = tmp_path / "fp32"
    pretrain(tiny_args(corpus, precision="fp32", save_every=10), tiny_flags(fp32, 20))
    c = _weights(fp32)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_non_finite_loss_stops_the_run_before_it_is_saved(corpus, tmp_path, one_thread):
    """The loss is read back at log, evaluation and checkpoint steps only; a NaN at step 3 is
    found at the step-4 checkpoint, which is then not written."""
    real_loss, calls = pretrain_mod.LanguageModeling.loss, {"n": 0}

    def spoilt_loss(self, model, batch):
        calls["n"] += 1
        loss, extras = real_loss(self, model, batch)
        return (loss * math.nan if calls["n"] == 3 else loss), extras

    args = tiny_args(corpus, save_every=4, log_every=10, eval_every=1000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain_mod.LanguageModeling, "loss", spoilt_loss)
        with pytest.raises(ChatsmithError, match="loss became nan at step 3; lower --lr"):
            pretrain(args, tiny_flags(tmp_path / "run", 20), Reporter(quiet=True))
    assert calls["n"] == 4  # it ran on to the checkpoint step without waiting for the loss
    assert not (tmp_path / "run" / "latest").exists()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1]  # only step 1 was logged

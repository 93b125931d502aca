"""Pretraining end to end: loss falls, resume is exact, checkpoints are atomic and checked."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_args, tiny_flags
from safetensors.torch import load_file

from chatsmith.checkpoint import latest_checkpoint_dir, load_checkpoint
from chatsmith.errors import ChatsmithError
from chatsmith.inference.loading import load_run
from chatsmith.reporting import Reporter
from chatsmith.training import pretrain as pretrain_mod
from chatsmith.training.metrics import read_metrics
from chatsmith.training.pretrain import pretrain


def test_tiny_run_learns_and_writes_a_run_folder(tiny_run):
    records = read_metrics(tiny_run / "metrics.jsonl")
    evals = [r["val_bpb"] for r in records if "val_bpb" in r]
    assert len(evals) >= 2 and evals[-1] < evals[0]  # held-out bits per byte fell
    train = [r["loss"] for r in records if "loss" in r]
    assert train[-1] < train[0]
    for name in ("tokenizer.json", "run.json", "loss_curve.png", "latest"):
        assert (tiny_run / name).is_file(), name
    ckpt = latest_checkpoint_dir(tiny_run)
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "state.json").is_file()


def test_resume_is_exact(corpus, tmp_path, monkeypatch):
    args = tiny_args(corpus, save_every=10, eval_every=1000)
    pretrain(args, tiny_flags(tmp_path / "straight", 20), Reporter(quiet=True))

    # interrupt a second, identical run right after its step-10 checkpoint
    calls = {"n": 0}
    real_next = pretrain_mod.LanguageModeling.next_batch

    def crashing_next(self, model):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real_next(self, model)

    monkeypatch.setattr(pretrain_mod.LanguageModeling, "next_batch", crashing_next)
    with pytest.raises(KeyboardInterrupt):
        pretrain(args, tiny_flags(tmp_path / "split", 20), Reporter(quiet=True))
    monkeypatch.setattr(pretrain_mod.LanguageModeling, "next_batch", real_next)
    assert load_checkpoint(tmp_path / "split").step == 10
    pretrain(args, tiny_flags(tmp_path / "split", 20, resume=True), Reporter(quiet=True))

    a = load_file(str(latest_checkpoint_dir(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(latest_checkpoint_dir(tmp_path / "split") / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    steps = [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps))  # no duplicated records after resuming


def test_truncated_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = latest_checkpoint_dir(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ChatsmithError, match="corrupt or truncated"):
        load_run(run, "cpu")


def test_tokenizer_that_does_not_match_the_model(tiny_run, tmp_path):
    import shutil

    from chatsmith.tokenizer import Tokenizer

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    Tokenizer.train(["some other text"] * 10, vocab_size=300).save(run)
    with pytest.raises(ChatsmithError, match="not the tokenizer this model was trained with"):
        load_run(run, "cpu")
    # a run saved before tokenizer fingerprints existed still gets the vocabulary check
    state = latest_checkpoint_dir(run) / "state.json"
    meta = json.loads(state.read_text())
    del meta["tokenizer_sha256"]
    state.write_text(json.dumps(meta))
    with pytest.raises(ChatsmithError, match="do not belong together"):
        load_run(run, "cpu")


def test_interrupted_checkpoint_write_leaves_the_last_good_one(tiny_run, tmp_path, monkeypatch):
    import shutil

    from chatsmith import checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = latest_checkpoint_dir(run)
    loaded = load_run(run, "cpu")

    def failing_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", failing_save)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(run, 999, loaded.model, loaded.cfg, {}, keep_last=3)
    assert latest_checkpoint_dir(run) == before
    load_run(run, "cpu")  # still loads


def test_run_json_records_settings(tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    assert info["stage"] == "pretrain"
    assert info["model"]["n_layer"] == 2 and info["args"]["vocab_size"] == 512

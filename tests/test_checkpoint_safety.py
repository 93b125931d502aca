"""Checkpoints survive a crash at any instant of saving, and damaged run folders are refused
with one clear line (through the real command line where a user meets them)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_cli import assert_clean_error

from chatsmith import checkpoint
from chatsmith.checkpoint import (
    latest_checkpoint_dir,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig, build_model
from chatsmith.reporting import Reporter

CFG = ModelConfig(vocab_size=300, n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=16)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no handler catches it."""


# every call through which a save touches the disk
DISK_OPS = [
    (os, "replace"),
    (os, "rename"),
    (shutil, "rmtree"),
    (checkpoint, "save_file"),
    (checkpoint, "save_model"),
    (Path, "write_text"),
    (Path, "mkdir"),
]


def crash_at(monkeypatch, k: int | None) -> dict:
    """Make the k-th disk operation crash (k=None: count them only)."""
    calls = {"n": 0}
    for owner, name in DISK_OPS:
        real = getattr(owner, name)

        def wrapper(*a, _real=real, **kw):
            calls["n"] += 1
            if calls["n"] == k:
                raise Crash
            return _real(*a, **kw)

        monkeypatch.setattr(owner, name, wrapper)
    return calls


def model_with(value: float) -> torch.nn.Module:
    model = build_model(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def loaded_value(run: Path) -> tuple[int, float]:
    ckpt = load_checkpoint(run)
    model = build_model(ckpt.model_config)
    load_model_weights(model, ckpt)
    return ckpt.step, float(next(model.parameters()).detach().flatten()[0])


@pytest.mark.parametrize("new_step", [10, 20], ids=["same-step-resave", "next-step"])
def test_a_crash_at_any_instant_of_a_save_leaves_a_loadable_checkpoint(
    tmp_path, monkeypatch, new_step
):
    base = tmp_path / "base"
    save_checkpoint(base, 10, model_with(1.0), CFG, {"n": torch.ones(2)}, keep_last=1)
    with monkeypatch.context() as m:  # how many disk operations one save takes
        shutil.copytree(base, tmp_path / "count")
        calls = crash_at(m, None)
        save_checkpoint(tmp_path / "count", new_step, model_with(2.0), CFG, {}, keep_last=1)
    assert calls["n"] >= 5
    for k in range(1, calls["n"] + 1):
        run = tmp_path / f"crash{k}"
        shutil.copytree(base, run)
        with monkeypatch.context() as m:
            crash_at(m, k)
            with pytest.raises(Crash):
                save_checkpoint(run, new_step, model_with(2.0), CFG, {}, keep_last=1)
        # the old checkpoint or the new one, whole, whatever instant the crash hit
        assert loaded_value(run) in ((10, 1.0), (new_step, 2.0)), f"crash at operation {k}"
        # and the run goes on: the next saves work and clean up what the crash left
        save_checkpoint(run, new_step, model_with(3.0), CFG, {}, keep_last=1)
        save_checkpoint(run, new_step, model_with(4.0), CFG, {}, keep_last=1)
        assert loaded_value(run) == (new_step, 4.0)
        assert [p.name for p in (run / "checkpoints").iterdir()] == [
            latest_checkpoint_dir(run).name
        ]


def test_keep_last_keeps_the_newest_steps(tmp_path):
    model = model_with(1.0)
    for step in (10, 20, 30, 30, 40):
        save_checkpoint(tmp_path, step, model, CFG, {}, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert [checkpoint._step_of(n) for n in names] == [30, 40]
    assert load_checkpoint(tmp_path).step == 40


def _state_json(run: Path) -> Path:
    return latest_checkpoint_dir(run) / "state.json"


def _edit_state(run: Path, edit) -> None:
    path = _state_json(run)
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _nan_weights(run: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = latest_checkpoint_dir(run) / "model.safetensors"
    weights = load_file(str(path))
    name = sorted(weights)[0]
    weights[name][0] = float("nan")
    save_file(weights, str(path))


def _latest_outside(run: Path) -> None:
    elsewhere = run.parent / "elsewhere"
    shutil.copytree(latest_checkpoint_dir(run), elsewhere / latest_checkpoint_dir(run).name)
    (run / "latest").write_text(f"../../elsewhere/{latest_checkpoint_dir(run).name}")


def _other_tokenizer(run: Path) -> None:
    from chatsmith.data import chitchat
    from chatsmith.tokenizer import Tokenizer

    vocab = Tokenizer.load(run).vocab_size
    other = Tokenizer.train([d[::-1] for d in chitchat.documents("train")[:400]], vocab)
    assert other.vocab_size == vocab
    other.save(run)


DAMAGE = {
    "step-not-integer": (lambda r: _edit_state(r, lambda m: m.update(step="ten")), "'step'"),
    "float-for-int": (
        lambda r: _edit_state(r, lambda m: m["model_config"].update(n_layer=2.0)),
        "'n_layer' must be an integer",
    ),
    "huge-context": (
        lambda r: _edit_state(r, lambda m: m["model_config"].update(max_seq_len=10**11)),
        "'max_seq_len' must be between",
    ),
    "huge-context-float": (
        lambda r: _edit_state(r, lambda m: m["model_config"].update(max_seq_len=1e11)),
        "'max_seq_len' must be an integer",
    ),
    "state-not-utf8": (
        lambda r: _state_json(r).write_bytes(b'{"step": "\xff\xfe"}'),
        "not UTF-8",
    ),
    "run-json-not-utf8": (lambda r: (r / "run.json").write_bytes(b"\xff{}"), "not UTF-8"),
    "latest-outside-run": (_latest_outside, "not a checkpoint inside"),
    "nan-weights": (_nan_weights, "non-finite"),
    "tokenizer-of-another-run": (_other_tokenizer, "not the tokenizer this model was trained"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_run_folder_is_one_clear_error(tiny_run, tmp_path, damage):
    run = tmp_path / "deep" / "run"
    shutil.copytree(tiny_run, run)
    apply, fragment = DAMAGE[damage]
    apply(run)
    command = (
        ["eval", str(run), "--max-tokens", "64"]
        if damage.startswith("n")
        else ["generate", str(run), "--prompt", "hi", "--max-tokens", "2"]
    )
    assert_clean_error(run_cli(*command, "--device", "cpu"), fragment)


def test_runs_saved_without_a_tokenizer_fingerprint_still_load(tiny_run, tmp_path):
    from chatsmith.inference.loading import load_run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert "tokenizer_sha256" in json.loads(_state_json(run).read_text())
    _edit_state(run, lambda m: m.pop("tokenizer_sha256"))
    assert load_run(run, "cpu").step == load_checkpoint(tiny_run).step
    # re-indenting the tokenizer file keeps its fingerprint
    tok_file = run / "tokenizer.json"
    tok_file.write_text(json.dumps(json.loads(tok_file.read_text()), indent=4))
    assert checkpoint.tokenizer_fingerprint(run) == checkpoint.tokenizer_fingerprint(tiny_run)


def test_config_types_and_bounds_are_checked_when_building_too():
    with pytest.raises(ChatsmithError, match="'max_seq_len' must be between"):
        ModelConfig(max_seq_len=200_000)
    with pytest.raises(ChatsmithError, match="'d_model' must be an integer"):
        ModelConfig.from_dict({"d_model": "64"})


def test_resume_after_a_crash_tore_the_last_metrics_line(tiny_run, corpus, tmp_path):
    from conftest import tiny_args, tiny_flags

    from chatsmith.training.metrics import read_metrics
    from chatsmith.training.pretrain import pretrain

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    metrics = run / "metrics.jsonl"
    step = load_checkpoint(run).step
    metrics.write_text(metrics.read_text() + '{"step": 41, "loss": 2.')  # cut mid-write
    pretrain(tiny_args(corpus), tiny_flags(run, step + 2, resume=True), Reporter(quiet=True))
    records = read_metrics(metrics)
    assert records[-1]["step"] == step + 2 and "val_loss" in records[-1]  # the final evaluation
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and max(steps) <= step
    # damage anywhere but the last line is not a crash artefact: it is refused
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(ChatsmithError, match="metrics.jsonl:2 is not a JSON record"):
        read_metrics(metrics)


def test_resume_refuses_changed_data_unless_allowed(tiny_run, corpus, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    step = load_checkpoint(run).step
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus["train"].read_text().replace("you", "thou"))
    resume = ["pretrain", "--resume", str(run), "--data", str(changed), "--device", "cpu"]
    resume += ["--max-steps", str(step + 1), "--eval-every", "1000"]
    assert_clean_error(run_cli(*resume), "the data differs", "--allow-data-change")
    assert load_checkpoint(run).step == step  # nothing was trained
    proc = run_cli(*resume, "--allow-data-change")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the data differs" in proc.stderr
    assert load_checkpoint(run).step == step + 1


def test_resume_with_another_optimizer_is_one_clear_error(tiny_run, corpus, tmp_path):
    from conftest import tiny_args, tiny_flags

    from chatsmith.training.pretrain import pretrain

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert json.loads((run / "run.json").read_text())["args"]["optimizer"] == "muon"
    step = load_checkpoint(run).step
    with pytest.raises(ChatsmithError, match="resume with the optimizer the run started with"):
        pretrain(
            tiny_args(corpus, optimizer="adamw"),
            tiny_flags(run, step + 2, resume=True),
            Reporter(quiet=True),
        )


def _write_many(path: str, text: str, ready, times: int) -> None:
    from chatsmith.files import write_text_atomic

    ready.wait()  # all writers begin together, however slowly their interpreters started
    for _ in range(times):
        write_text_atomic(Path(path), text)


def test_processes_writing_one_file_at_once_never_collide(tmp_path):
    # torchrun ranks copy the same tokenizer into a new run folder at the same instant
    import multiprocessing as mp

    target = tmp_path / "tokenizer.json"
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(3)
    args = (str(target), "x" * 4096, ready, 500)
    procs = [ctx.Process(target=_write_many, args=args) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()  # no timeout: a loaded machine may take long to start three interpreters
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert target.read_text() == "x" * 4096
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    from chatsmith.files import write_atomic

    target = tmp_path / "index.json"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]

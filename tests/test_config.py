"""Typed stage configs: defaults in one place, flag help made from them, resume precedence."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from chatsmith.errors import ChatsmithError
from chatsmith.training.config import (
    DEFAULT_SEED,
    PretrainConfig,
    RLConfig,
    SFTConfig,
    cli_fields,
    help_text,
    resolve_run,
    resume_config,
)

CPU = torch.device("cpu")


def field(cls, name):
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def test_help_shows_the_dataclass_default():
    assert help_text(field(PretrainConfig, "vocab_size")) == "BPE vocabulary size (default 8192)."
    assert help_text(field(RLConfig, "std_normalize")).endswith("(default off).")
    assert help_text(field(SFTConfig, "lr")) == "Peak learning rate (default 0.001)."
    # a None default leaves the help to say what it means
    assert help_text(field(PretrainConfig, "depth")).startswith("One dial for size")
    # fixed loop settings of a stage are not flags
    assert {"batch_size", "optimizer", "grad_accum"}.isdisjoint(
        f.name for f in cli_fields(RLConfig)
    )
    assert {"batch_size", "optimizer"} <= {f.name for f in cli_fields(SFTConfig)}


def test_rl_batch_is_every_reply_of_a_step():
    assert RLConfig(prompts_per_step=3, group_size=5).batch_size == 15


def test_resume_keeps_saved_settings_unless_given_again(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = {"args": {"lr": 0.5, "vocab_size": 300, "a_removed_setting": 1}}
    saved["flags"] = {"seed": 11, "max_minutes": None, "max_steps": 40}
    (run_dir / "run.json").write_text(json.dumps(saved))

    run = resolve_run("pretrain", 5.0, None, run_dir, None, None, CPU, None)
    assert (run.out, run.resume, run.seed, run.max_steps, run.max_minutes) == (
        run_dir,
        True,
        11,
        40,
        None,
    )
    config = resume_config(PretrainConfig, run, {"lr": None, "seq_len": 128})
    assert (config.lr, config.vocab_size, config.seq_len) == (0.5, 300, 128)
    # a budget given again replaces the saved one
    again = resolve_run("pretrain", 5.0, None, run_dir, None, 3, CPU, 2)
    assert (again.max_steps, again.max_minutes, again.seed) == (3, None, 2)


def test_new_run_gets_stage_defaults(tmp_path):
    run = resolve_run(
        "sft", SFTConfig.default_minutes, tmp_path / "new", None, None, None, CPU, None
    )
    assert (run.max_minutes, run.max_steps, run.seed, run.resume) == (
        3.0,
        None,
        DEFAULT_SEED,
        False,
    )
    assert resume_config(SFTConfig, run, {"lr": None}) == SFTConfig()
    (tmp_path / "new" / "latest").parent.mkdir(parents=True)
    (tmp_path / "new" / "latest").write_text("step-1")
    with pytest.raises(ChatsmithError, match="already holds a run"):
        resolve_run("sft", 3.0, tmp_path / "new", None, None, None, CPU, None)
    with pytest.raises(ChatsmithError, match="different folders"):
        resolve_run("sft", 3.0, tmp_path / "a", tmp_path / "b", None, None, CPU, None)


def test_allow_data_change_is_a_run_option_of_the_stages_that_fingerprint_data(tmp_path):
    import typer

    from chatsmith.cli import app

    command = typer.main.get_command(app)
    flags = {
        name: {opt for p in command.commands[name].params for opt in p.opts}
        for name in ("pretrain", "sft", "rl")
    }
    assert "--allow-data-change" in flags["pretrain"] and "--allow-data-change" in flags["sft"]
    assert "--allow-data-change" not in flags["rl"]  # RL stores no data fingerprint
    # asked anew on each resume: run.json does not keep it
    run = resolve_run("sft", 3.0, tmp_path / "new", None, None, 5, CPU, None, True)
    assert run.allow_data_change and "allow_data_change" not in run.budget()


def test_learning_rates_follow_the_preset_unless_given():
    narrow = PretrainConfig()
    assert (narrow.lr, narrow.muon_lr) == (6e-3, 0.008)  # tuned for the CPU default
    mini = PretrainConfig(preset="mini")
    assert (mini.lr, mini.muon_lr) == (3e-3, 0.02)
    assert PretrainConfig(depth=2).muon_lr == 0.02  # the dial names no preset's rates
    given = PretrainConfig(lr=1e-3, muon_lr=0.05)
    assert (given.lr, given.muon_lr) == (1e-3, 0.05)

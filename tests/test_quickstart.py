"""`chatsmith quickstart` end to end, at toy sizes (the real sizes are timed in benchmarks/)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import Notes, run_cli

from chatsmith.data import chitchat
from chatsmith.errors import ChatsmithError
from chatsmith.quickstart import (
    SUMMARY_FILE,
    QuickPlan,
    plan_for_machine,
    pretrain_run,
    run_quickstart,
)


@pytest.mark.parametrize(
    ("cores", "depth", "preset"), [(2, None, "narrow"), (4, 3, None), (16, 4, None)]
)
def test_plan_fits_the_machine(monkeypatch, cores, depth, preset):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    cpu = plan_for_machine(torch.device("cpu"))
    # more cores buy a deeper model; 2-3 cores get the tuned pretraining default
    assert (cpu.depth, cpu.preset, cpu.extra["cpu_cores"]) == (depth, preset, cores)
    assert cpu.total_minutes == 13.0 and cpu.pretrain_step_cap is None
    # pretraining gets its share of the minutes left after the fixed overhead
    budget = pretrain_run(cpu, Path("base"), torch.device("cpu"), 1).max_minutes
    assert budget == pytest.approx((13.0 - 3.0) * 0.68)
    assert plan_for_machine(torch.device("cpu"), 9).total_minutes == 9
    gpu = plan_for_machine(torch.device("cuda"))
    assert gpu.depth == 8 and gpu.total_minutes == 8.0 and gpu.pretrain_step_cap == 500
    with pytest.raises(ChatsmithError, match="too short"):
        plan_for_machine(torch.device("cpu"), 2)


@pytest.mark.slow
def test_quickstart_runs_every_stage(corpus, tmp_path, capsys):
    val = [c for c in chitchat.chat_conversations("val") if len(c) > 1][:20]
    val_file = tmp_path / "val.jsonl"
    val_file.write_text("".join(json.dumps({"messages": c}) + "\n" for c in val))
    plan = QuickPlan(
        vocab_size=400,
        depth=1,
        seq_len=64,
        pretrain_batch=8,
        sft_batch=8,
        pretrain_steps=15,
        sft_steps=10,
        pretrain_data=str(corpus["train"]),
        pretrain_val_data=str(corpus["val"]),
        max_conversations=100,
        sft_val_data=str(val_file),
        sample_prompts=("Hi!",),
        sample_tokens=8,
    )
    notes = Notes()
    summary = run_quickstart(tmp_path / "qs", plan, seed=3, reporter=notes)
    assert summary["pretrain"]["steps"] == 15 and summary["sft"]["steps"] == 10
    assert summary["pretrain"]["val_bpb"] > 0 and summary["sft"]["val_loss"] > 0
    assert summary["samples"][0]["user"] == "Hi!" and "<|" not in summary["samples"][0]["assistant"]
    on_disk = json.loads((tmp_path / "qs" / SUMMARY_FILE).read_text())
    assert on_disk["chat_run"] == str(tmp_path / "qs" / "chat")
    assert capsys.readouterr().out == ""  # progress and notes never touch stdout
    assert notes.lines[0].startswith(f"quickstart into {tmp_path / 'qs'}")
    assert f"you> Hi!\nassistant> {summary['samples'][0]['assistant']}" in notes.lines
    # the printed next step works
    proc = run_cli(
        "chat", summary["chat_run"], "--prompt", "Hello", "--max-tokens", "5", "--device", "cpu"
    )
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ChatsmithError, match="not empty"):
        run_quickstart(tmp_path / "qs", plan, reporter=notes)


def test_quickstart_cli_rejects_a_too_small_budget(tmp_path):
    proc = run_cli("quickstart", "--out", str(tmp_path / "q"), "--max-minutes", "1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --max-minutes 1 is too short")

"""Shared fixtures: a tiny corpus and a tiny pretrained run, built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from chatsmith.data import chitchat
from chatsmith.reporting import Reporter
from chatsmith.training.config import PretrainConfig, RunConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine two threads
    oversubscribe the cores and run these tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A few hundred real conversations as plain text files (train and held-out)."""
    root = tmp_path_factory.mktemp("corpus")
    train, val = root / "train.txt", root / "val.txt"
    train.write_text("\n\n".join(chitchat.documents("train")[:400]))
    val.write_text("\n\n".join(chitchat.documents("val")[:40]))
    return {"train": train, "val": val, "root": root}


def tiny_args(corpus: dict[str, Path], **over) -> PretrainConfig:
    """Pretraining settings for a tiny model on the tiny corpus (seconds on a CPU)."""
    settings = dict(
        data=str(corpus["train"]),
        val_data=str(corpus["val"]),
        vocab_size=512,
        preset="tiny",
        seq_len=64,
        batch_size=8,
        eval_every=20,
        save_every=20,
        warmup_steps=5,
        lr=3e-3,
    )
    return PretrainConfig(**{**settings, **over})


def tiny_flags(out: Path, max_steps: int, resume: bool = False, seed: int = 7) -> RunConfig:
    return RunConfig(
        out=out, resume=resume, max_steps=max_steps, device=torch.device("cpu"), seed=seed
    )


class Notes(Reporter):
    """A silent reporter that keeps the messages, for tests to read."""

    def __init__(self):
        super().__init__(quiet=True)
        self.lines: list[str] = []

    def say(self, msg: str) -> None:
        self.lines.append(msg)


@pytest.fixture(scope="session")
def tiny_run(corpus, tmp_path_factory) -> Path:
    """A tiny pretrained decoder run folder (tokenizer, checkpoint, metrics)."""
    from chatsmith.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("runs") / "tiny"
    pretrain(tiny_args(corpus), tiny_flags(out, 40), Reporter(quiet=True))
    return out


@pytest.fixture(scope="session")
def encoder_run(corpus, tmp_path_factory) -> Path:
    """A tiny masked-LM encoder run folder, trained on the same corpus."""
    from chatsmith.training.pretrain import pretrain

    out = tmp_path_factory.mktemp("runs") / "encoder"
    pretrain(tiny_args(corpus, arch="encoder"), tiny_flags(out, 40), Reporter(quiet=True))
    return out


def run_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the real `chatsmith` command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "chatsmith.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def wait_for(cond, timeout: float = 10.0) -> bool:
    """Poll `cond` until it holds or `timeout` seconds pass (servers answer on their own
    thread, so tests wait for a state rather than sleep a fixed time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False

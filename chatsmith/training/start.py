"""Where a derived stage (SFT, RL) starts: a base run's latest checkpoint, or, on resume, the
stage's own run folder (whose weights the training loop restores)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from chatsmith.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_model_weights,
    load_run_tokenizer,
    read_run_info,
)
from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig, build_model
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.config import RunConfig


@dataclass
class StartPoint:
    model: nn.Module
    cfg: ModelConfig
    tokenizer: Tokenizer
    base_info: dict  # run.json of the base run (of the resumed run itself on resume)
    checkpoint: Checkpoint  # the checkpoint the model came from


def load_base_run(base_run: Path, purpose: str) -> tuple[dict, Checkpoint, Tokenizer]:
    """A base run's info, latest checkpoint (weights only) and tokenizer, checked to be a
    decoder with the chat special tokens; `purpose` completes "cannot be ... ".
    """
    if not base_run.exists():
        raise ChatsmithError(f"base run {base_run} does not exist")
    info = read_run_info(base_run)
    ckpt = load_checkpoint(base_run, with_state=False)
    arch = ckpt.model_config.arch
    if arch != "decoder":
        raise ChatsmithError(f"base run {base_run} is a {arch} model; chat needs a decoder")
    try:
        tok = load_run_tokenizer(base_run, ckpt.model_config)
    except ChatsmithError as e:
        raise ChatsmithError(f"base run {base_run} cannot be {purpose}: {e}") from None
    return info, ckpt, tok


def start_model(run: RunConfig, base_run: str | None, purpose: str) -> StartPoint:
    """The model a derived stage trains. A fresh run loads the base run's weights and copies
    its tokenizer into `run.out`; a resumed one builds the model from its own folder."""
    out = Path(run.out)
    if run.resume:
        ckpt = load_checkpoint(out, with_state=False)
        tok = load_run_tokenizer(out, ckpt.model_config)
        model = build_model(ckpt.model_config)  # the loop loads the resumed weights
        return StartPoint(model, ckpt.model_config, tok, read_run_info(out), ckpt)
    if not base_run:
        raise ChatsmithError(f"give the run to start from (a base run to be {purpose})")
    base = Path(base_run)
    if out.resolve() == base.resolve():
        raise ChatsmithError("--out must be a new folder, not the base run itself")
    info, ckpt, tok = load_base_run(base, purpose)
    model = build_model(ckpt.model_config)
    load_model_weights(model, ckpt)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_beside(out)  # with an imported run's chat format
    return StartPoint(model, ckpt.model_config, tok, info, ckpt)

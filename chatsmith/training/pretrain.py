"""Pretraining: next-token prediction on raw text, the first stage of every chatsmith model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from chatsmith.checkpoint import data_fingerprint
from chatsmith.data import chitchat
from chatsmith.data.seq2seq import get_seq2seq_task
from chatsmith.data.sources import iter_documents
from chatsmith.data.splits import split_tail
from chatsmith.data.tokens import TokenWindows, tokenize_documents
from chatsmith.errors import ChatsmithError
from chatsmith.inference.scoring import score_tokens
from chatsmith.models import (
    ModelConfig,
    build_model,
    config_from_depth,
    config_from_preset,
    format_card,
    model_card,
)
from chatsmith.reporting import Reporter
from chatsmith.runtime import seed_everything
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.config import PretrainConfig, RunConfig
from chatsmith.training.families import check_family, masked_objective, task_objective
from chatsmith.training.loop import TrainResult, train
from chatsmith.training.masked_lm import MaskedLM

QUICK_EVAL_TOKENS = 32_768


class LanguageModeling:
    """Next-token prediction over shuffled windows; held-out figures in bits per byte."""

    name = "pretrain"

    def __init__(
        self,
        train_tokens: torch.Tensor,
        val_tokens: torch.Tensor,
        tok: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int,
        device: torch.device,
    ):
        self.windows = TokenWindows(train_tokens, seq_len, batch_size, seed)
        self.val_tokens, self.seq_len, self.device = val_tokens, seq_len, device
        self.bytes_per_token = torch.tensor(tok.bytes_per_token, dtype=torch.long)
        self.eval_batch = batch_size

    def next_batch(self, model: nn.Module) -> dict:
        x, y = self.windows.next_batch()
        return {
            "x": x.to(self.device, non_blocking=True),
            "y": y.to(self.device, non_blocking=True),
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return model(batch["x"], batch["y"])[1], {"epoch": self.windows.epoch}

    def batch_tokens(self, batch: dict) -> int:
        return batch["y"].numel()

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        score = score_tokens(
            model,
            self.val_tokens,
            self.bytes_per_token,
            self.seq_len,
            self.eval_batch,
            None if final else QUICK_EVAL_TOKENS,
        )
        return {"val_loss": score.loss, "val_bpb": score.bpb, "val_tokens": score.tokens}

    def state_dict(self) -> dict:
        return self.windows.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.windows.load_state_dict(state)


def _take(docs: Iterable[str], max_bytes: float) -> list[str]:
    out, size = [], 0
    for doc in docs:
        out.append(doc)
        size += len(doc)
        if size >= max_bytes:
            break
    return out


def load_corpus(
    data: str, val_data: str | None, max_text_mb: float
) -> tuple[list[str], list[str] | None]:
    """Training and held-out documents; held-out is None when it is to be cut from the tokens."""
    if data == chitchat.BUILTIN_NAME:
        if val_data is None:
            return chitchat.documents("train"), chitchat.documents("val")
        train_docs = chitchat.documents("train")
    else:
        train_docs = _take(iter_documents(data), max_text_mb * 1e6)
    val_docs = _take(iter_documents(val_data), max_text_mb * 1e6) if val_data else None
    return train_docs, val_docs


def model_config(config: PretrainConfig, vocab_size: int) -> ModelConfig:
    sizes = {
        "arch": config.arch,
        "vocab_size": vocab_size,
        "max_seq_len": config.seq_len,
        "n_kv_head": config.n_kv_head,
        "n_layer": config.n_layer,
        "n_decoder_layer": config.n_decoder_layer,
    }
    if config.depth:
        if config.n_kv_head is None:
            sizes["n_kv_head"] = config.depth
        return config_from_depth(int(config.depth), **sizes)
    return config_from_preset(config.preset, **sizes)


def pretrain(
    config: PretrainConfig, run: RunConfig, reporter: Reporter | None = None
) -> TrainResult:
    """Train a tokenizer (unless resuming) and a model into `run.out`: a decoder, an encoder
    (masked-LM) or, on a `task`, an encoder-decoder (see training.families)."""
    check_family(config)
    reporter = reporter or Reporter()
    seed_everything(run.seed)
    out = Path(run.out)
    if config.task:
        train_docs, val_docs = get_seq2seq_task(config.task).texts(), None
    else:
        train_docs, val_docs = load_corpus(config.data, config.val_data, config.max_text_mb)
    if run.resume:
        tok = Tokenizer.load(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        reporter.phase("tokenizer")
        reporter.say(
            f"training a {config.vocab_size}-token BPE tokenizer on {len(train_docs):,} documents"
        )
        tok = Tokenizer.train(
            train_docs,
            config.vocab_size,
            progress=reporter.shows_tool_progress(),
            notify=reporter.say,
        )
        tok.save(out)
    cfg = model_config(config, tok.vocab_size)
    model = build_model(cfg)
    if config.task:
        objective, summary, data = task_objective(
            config, tok, cfg.max_seq_len, run.seed, run.device
        )
    else:
        objective, summary, data = text_objective(config, cfg, tok, train_docs, val_docs, run)
    reporter.say(summary)
    reporter.say(format_card(model_card(cfg, model)))
    info = {"stage": "pretrain", "args": asdict(config), "flags": run.budget(), "data": data}
    return train(model, cfg, objective, config, run, info, reporter)


def text_objective(
    config: PretrainConfig,
    cfg: ModelConfig,
    tok: Tokenizer,
    train_docs: list[str],
    val_docs: list[str] | None,
    run: RunConfig,
) -> tuple[LanguageModeling | MaskedLM, str, dict]:
    """Next-token prediction (decoder) or masked-LM (encoder) on tokenized documents, a
    summary line and the data's fingerprint."""
    train_tokens = tokenize_documents(tok, train_docs)
    if val_docs is None:
        train_tokens, val_tokens = split_tail(train_tokens)
    else:
        val_tokens = tokenize_documents(tok, val_docs)
    if len(val_tokens) < 2:
        raise ChatsmithError("held-out data is too small to evaluate; give --val-data")
    summary = f"data: {len(train_tokens):,} training tokens, {len(val_tokens):,} held-out tokens"
    make = masked_objective if cfg.arch == "encoder" else LanguageModeling
    objective = make(
        train_tokens, val_tokens, tok, cfg.max_seq_len, config.batch_size, run.seed, run.device
    )
    return objective, summary, data_fingerprint(train=train_tokens, val=val_tokens)

"""Pretraining: next-token prediction on raw text, the first stage of every chatsmith model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from chatsmith.data import chitchat
from chatsmith.data.seq2seq import get_seq2seq_task
from chatsmith.data.sources import iter_documents
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
from chatsmith.runtime import seed_everything
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.families import check_family, masked_objective, task_objective
from chatsmith.training.loop import RunFlags, TrainResult, TrainSettings, train
from chatsmith.training.objectives import MaskedLM

BUILTIN = "builtin:chitchat"
HELD_OUT_FRACTION = 0.05
QUICK_EVAL_TOKENS = 32_768

PRETRAIN_DEFAULTS: dict = {
    "arch": "decoder",
    "task": None,
    "data": BUILTIN,
    "val_data": None,
    "vocab_size": 2048,
    "preset": "narrow",
    "depth": None,
    "seq_len": 256,
    "n_kv_head": None,
    "max_text_mb": 512.0,
    "batch_size": 16,
    "grad_accum": 1,
    "lr": 3e-3,
    "warmup_steps": 30,
    "optimizer": "muon",
    "eval_every": 200,
    "save_every": 500,
    "compile": None,
}


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
    if data == BUILTIN:
        if val_data is None:
            return chitchat.documents("train"), chitchat.documents("val")
        train_docs = chitchat.documents("train")
    else:
        train_docs = _take(iter_documents(data), max_text_mb * 1e6)
    val_docs = _take(iter_documents(val_data), max_text_mb * 1e6) if val_data else None
    return train_docs, val_docs


def model_config(args: dict, vocab_size: int) -> ModelConfig:
    sizes = {
        "arch": args.get("arch") or "decoder",
        "vocab_size": vocab_size,
        "max_seq_len": args["seq_len"],
        "n_kv_head": args.get("n_kv_head"),
        # not flags: for callers that size families to equal parameter counts (benchmarks)
        "n_layer": args.get("n_layer"),
        "n_decoder_layer": args.get("n_decoder_layer"),
    }
    if args.get("depth"):
        if args["n_kv_head"] is None:
            sizes["n_kv_head"] = args["depth"]
        return config_from_depth(int(args["depth"]), **sizes)
    return config_from_preset(args["preset"], **sizes)


def pretrain(
    args: dict,
    flags: RunFlags,
    flag_info: dict | None = None,
    quiet: bool = False,
    say=print,
    on_step=None,
) -> TrainResult:
    """Train a tokenizer (unless resuming) and a model from `args` (see defaults): a decoder,
    an encoder (masked-LM) or, on a `task`, an encoder-decoder (see training.families).

    `on_step` is passed to the training loop (for a caller's own progress display)."""
    check_family(args, BUILTIN)
    seed_everything(flags.seed)
    out = Path(flags.out)
    if args.get("task"):
        train_docs, val_docs = get_seq2seq_task(args["task"]).texts(), None
    else:
        train_docs, val_docs = load_corpus(args["data"], args.get("val_data"), args["max_text_mb"])
    if flags.resume:
        tok = Tokenizer.load(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        say(f"training a {args['vocab_size']}-token BPE tokenizer on {len(train_docs):,} documents")
        tok = Tokenizer.train(train_docs, args["vocab_size"])
        tok.save(out)
    cfg = model_config(args, tok.vocab_size)
    model = build_model(cfg)
    if args.get("task"):
        objective, summary = task_objective(args, tok, cfg.max_seq_len, flags.seed, flags.device)
    else:
        objective, summary = text_objective(args, cfg, tok, train_docs, val_docs, flags)
    settings = TrainSettings(
        batch_size=args["batch_size"],
        grad_accum=args["grad_accum"],
        lr=args["lr"],
        warmup_steps=args["warmup_steps"],
        optimizer=args["optimizer"],
        eval_every=args["eval_every"],
        save_every=args["save_every"],
        compile=args["compile"],
    )
    say(summary)
    say(format_card(model_card(cfg, model)))
    info = {"stage": "pretrain", "args": args, "flags": flag_info or {}}
    return train(model, cfg, objective, settings, flags, info, quiet=quiet, on_step=on_step)


def text_objective(
    args: dict,
    cfg: ModelConfig,
    tok: Tokenizer,
    train_docs: list[str],
    val_docs: list[str] | None,
    flags: RunFlags,
) -> tuple[LanguageModeling | MaskedLM, str]:
    """Next-token prediction (decoder) or masked-LM (encoder) on tokenized documents."""
    train_tokens = tokenize_documents(tok, train_docs)
    if val_docs is None:
        cut = int(len(train_tokens) * (1 - HELD_OUT_FRACTION))
        train_tokens, val_tokens = train_tokens[:cut], train_tokens[cut:]
    else:
        val_tokens = tokenize_documents(tok, val_docs)
    if len(val_tokens) < 2:
        raise ChatsmithError("held-out data is too small to evaluate; give --val-data")
    summary = f"data: {len(train_tokens):,} training tokens, {len(val_tokens):,} held-out tokens"
    make = masked_objective if cfg.arch == "encoder" else LanguageModeling
    objective = make(
        train_tokens, val_tokens, tok, cfg.max_seq_len, args["batch_size"], flags.seed, flags.device
    )
    return objective, summary

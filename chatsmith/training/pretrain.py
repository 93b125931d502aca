"""Pretraining: next-token prediction on raw text, the first stage of every chatsmith model."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from chatsmith.checkpoint import data_fingerprint
from chatsmith.data import chitchat
from chatsmith.data.code import code_files, is_code_source
from chatsmith.data.fim import check_rate, fim_token_stream
from chatsmith.data.seq2seq import get_seq2seq_task
from chatsmith.data.shards import (
    INDEX_FILE,
    TokenShards,
    fingerprint,
    is_shard_folder,
    open_shards,
)
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
from chatsmith.tokenizer import TOKENIZER_FILE, Tokenizer
from chatsmith.training.config import PretrainConfig, RunConfig
from chatsmith.training.families import check_family, masked_objective, task_objective
from chatsmith.training.loop import TrainResult, train
from chatsmith.training.masked_lm import MaskedLM
from chatsmith.training.parallel import ParallelPlan, plan_from_env

QUICK_EVAL_TOKENS = 32_768


class LanguageModeling:
    """Next-token prediction over shuffled windows; held-out figures in bits per byte."""

    name = "pretrain"

    def __init__(
        self,
        train_tokens,
        val_tokens: torch.Tensor,
        tok: Tokenizer,
        seq_len: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        plan: ParallelPlan | None = None,
    ):
        """`train_tokens`: one tensor or a list of (memory-mapped) arrays; `batch_size` is the
        global batch, of which this process draws its plan's slice."""
        rank, world = (plan.rank, plan.world) if plan is not None else (0, 1)
        self.windows = TokenWindows(train_tokens, seq_len, batch_size, seed, rank, world)
        self.val_tokens, self.seq_len, self.device = val_tokens, seq_len, device
        self.bytes_per_token = torch.tensor(tok.bytes_per_token, dtype=torch.long)
        self.eval_batch = max(1, batch_size // world)

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
    data: str, val_data: str | None, max_text_mb: float, include: str | None = None, say=print
) -> tuple[list[str], list[str] | None]:
    """Training and held-out documents; held-out is None when it is to be cut from the tokens."""
    if is_code_source(data, include):
        train_docs = _take(
            (f.text for f in code_files(data, include, "train", say)), max_text_mb * 1e6
        )
        if val_data:
            val = code_files(val_data, include, "all", say)
        else:
            val = code_files(data, include, "val", say)
        return train_docs, [f.text for f in val] or None
    if data == chitchat.BUILTIN_NAME:
        if val_data is None:
            return chitchat.documents("train"), chitchat.documents("val")
        train_docs = chitchat.documents("train")
    else:
        train_docs = _take(iter_documents(data), max_text_mb * 1e6)
    val_docs = _take(iter_documents(val_data), max_text_mb * 1e6) if val_data else None
    return train_docs, val_docs


def _shard_data(
    config: PretrainConfig, out: Path, resume: bool, main: bool
) -> tuple[TokenShards, Tokenizer, list, torch.Tensor]:
    """Token shards named by --data: their tokenizer becomes the run's (a resumed run checks
    that they still match it); held-out tokens from --val-data or the shards' own."""
    shards = open_shards(config.data, fingerprint(out / TOKENIZER_FILE) if resume else None)
    tok = shards.tokenizer
    if not resume and main:
        tok.save(out)
    if config.val_data:
        val_docs = _take(iter_documents(config.val_data), config.max_text_mb * 1e6)
        val_tokens = tokenize_documents(tok, val_docs)
    else:
        val_tokens = torch.from_numpy(shards.val().astype("int64"))
    return shards, tok, shards.train(), val_tokens


def _run_tokenizer(
    config: PretrainConfig,
    docs: list[str],
    out: Path,
    run: RunConfig,
    main: bool,
    reporter: Reporter,
) -> Tokenizer:
    """The run's tokenizer: loaded on resume, else trained on `docs` and saved (by rank 0)."""
    if run.resume:
        return Tokenizer.load(out)
    reporter.phase("tokenizer")
    reporter.say(f"training a {config.vocab_size}-token BPE tokenizer on {len(docs):,} documents")
    tok = Tokenizer.train(
        docs, config.vocab_size, progress=reporter.shows_tool_progress(), notify=reporter.say
    )
    if main:
        tok.save(out)
    return tok


def _text_data(
    config: PretrainConfig, out: Path, run: RunConfig, main: bool, reporter: Reporter
) -> tuple[torch.Tensor, torch.Tensor, Tokenizer]:
    """Text or code named by --data, tokenized in memory with the run's tokenizer (trained
    unless resuming), with --fim applied; held-out tokens from --val-data or cut from the end."""
    fim = check_rate(config.fim)
    train_docs, val_docs = load_corpus(
        config.data, config.val_data, config.max_text_mb, config.include, reporter.say
    )
    tok = _run_tokenizer(config, train_docs, out, run, main, reporter)
    if fim > 0:
        reporter.say(
            f"fill-in-the-middle: {fim:.0%} of context-sized pieces (PSM and SPM, half each)"
        )
        train_tokens = fim_token_stream(tok, train_docs, fim, config.seq_len, run.seed)
    else:
        train_tokens = tokenize_documents(tok, train_docs)
    if val_docs is None:
        train_tokens, val_tokens = split_tail(train_tokens)
        return train_tokens, val_tokens, tok
    return train_tokens, tokenize_documents(tok, val_docs), tok


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
    """Train a tokenizer (unless resuming or given token shards) and a model into `run.out`:
    a decoder, an encoder (masked-LM) or, on a `task`, an encoder-decoder (see
    training.families); in this process or as one rank of a torchrun job."""
    check_family(config)
    reporter = reporter or Reporter()
    seed_everything(run.seed)
    out = Path(run.out)
    plan = plan_from_env(run.parallel, run.device, run.activation_checkpointing)
    out.mkdir(parents=True, exist_ok=True)
    if config.task:
        docs = get_seq2seq_task(config.task).texts()
        tok = _run_tokenizer(config, docs, out, run, plan.is_main, reporter)
        cfg = model_config(config, tok.vocab_size)
        objective, summary, data = task_objective(
            config, tok, cfg.max_seq_len, run.seed, plan.device
        )
    else:
        objective, summary, data, tok = _token_objective(config, out, run, plan, reporter)
        cfg = model_config(config, tok.vocab_size)
    model = build_model(cfg)
    reporter.say(summary)
    reporter.say(format_card(model_card(cfg, model)))
    info = {"stage": "pretrain", "args": asdict(config), "flags": run.budget(), "data": data}
    if is_code_source(config.data, config.include):
        info["kind"] = "code"  # completes code (`chatsmith complete`); not a chat model
    run = replace(run, device=plan.device)  # cuda:LOCAL_RANK under torchrun
    try:
        return train(model, cfg, objective, config, run, info, reporter, plan)
    finally:
        plan.close()


def _token_objective(
    config: PretrainConfig, out: Path, run: RunConfig, plan: ParallelPlan, reporter: Reporter
) -> tuple[LanguageModeling | MaskedLM, str, dict, Tokenizer]:
    """Next-token prediction (decoder) or masked-LM (encoder) on token shards or tokenized
    text, a summary line, the data's fingerprint and the run's tokenizer."""
    if is_shard_folder(config.data):
        shards, tok, train_tokens, val_tokens = _shard_data(config, out, run.resume, plan.is_main)
        n_train = shards.train_tokens
        # the index names every shard's size and the tokenizer: hashing it stands for the data
        index = hashlib.sha256((Path(config.data) / INDEX_FILE).read_bytes()).hexdigest()
        data = {"train_tokens": n_train, "val_tokens": len(val_tokens), "sha256": index}
    else:
        train_tokens, val_tokens, tok = _text_data(config, out, run, plan.is_main, reporter)
        n_train = len(train_tokens)
        data = data_fingerprint(train=train_tokens, val=val_tokens)
    if len(val_tokens) < 2:
        raise ChatsmithError("held-out data is too small to evaluate; give --val-data")
    summary = f"data: {n_train:,} training tokens, {len(val_tokens):,} held-out tokens"
    sizes = (config.seq_len, config.batch_size, run.seed, plan.device)
    if config.arch == "encoder":
        objective = masked_objective(train_tokens, val_tokens, tok, *sizes)
    else:
        objective = LanguageModeling(train_tokens, val_tokens, tok, *sizes, plan)
    return objective, summary, data, tok

"""What `pretrain --arch` changes: which objective trains which model family on what data.

- decoder: next-token prediction on text (the default), or a seq2seq task read as a prefix;
- encoder: masked-language modelling on the same text;
- encoder_decoder: a seq2seq task (`--task`), the source read by the encoder.
"""

from __future__ import annotations

import torch

from chatsmith.checkpoint import data_fingerprint
from chatsmith.data.chitchat import BUILTIN_NAME
from chatsmith.data.seq2seq import get_seq2seq_task, pair_ids
from chatsmith.data.tokens import TokenWindows
from chatsmith.errors import ChatsmithError
from chatsmith.models.config import ARCHITECTURES
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.config import PretrainConfig
from chatsmith.training.masked_lm import MaskedLM
from chatsmith.training.seq2seq import Seq2Seq


def check_family(config: PretrainConfig) -> None:
    arch, task = config.arch, config.task
    if arch not in ARCHITECTURES:
        raise ChatsmithError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if arch == "encoder_decoder" and not task:
        raise ChatsmithError(
            "--arch encoder_decoder learns a sequence-to-sequence task: give --task "
            "chitchat-reply, arithmetic or a .jsonl of source/target pairs"
        )
    if arch == "encoder" and task:
        raise ChatsmithError("--arch encoder learns from text (--data), not from a --task")
    if task and (config.data != BUILTIN_NAME or config.val_data):
        raise ChatsmithError("--task brings its own data; give --task or --data, not both")


def task_objective(
    config: PretrainConfig, tok: Tokenizer, seq_len: int, seed: int, device: torch.device
) -> tuple[Seq2Seq, str, dict]:
    """The seq2seq objective on a task's pairs, a summary line and the pairs' fingerprint."""
    task = get_seq2seq_task(config.task)
    train_pairs = pair_ids(tok, task.pairs("train"), seq_len)
    val_pairs = pair_ids(tok, task.pairs("val"), seq_len)
    if not train_pairs or not val_pairs:
        raise ChatsmithError(f"task {task.name} needs training and held-out pairs")
    decoder_only = config.arch == "decoder"
    objective = Seq2Seq(
        train_pairs,
        val_pairs,
        tok.bos_id,
        tok.pad_id,
        config.batch_size,
        device,
        seed,
        sep_id=tok.assistant_id if decoder_only else None,
    )
    summary = f"data: task {task.name}, {len(train_pairs):,} pairs, {len(val_pairs):,} held out"
    fingerprint = data_fingerprint(
        train_source=[s for s, _ in train_pairs],
        train_target=[t for _, t in train_pairs],
        val_source=[s for s, _ in val_pairs],
        val_target=[t for _, t in val_pairs],
    )
    return objective, summary, fingerprint


def masked_objective(
    train_tokens: torch.Tensor,
    val_tokens: torch.Tensor,
    tok: Tokenizer,
    seq_len: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> MaskedLM:
    windows = TokenWindows(train_tokens, seq_len, batch_size, seed)
    return MaskedLM(windows, val_tokens, tok.mask_id, device, seed)

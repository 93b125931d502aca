"""Supervised fine-tuning: teach a pretrained model to answer, turn by turn, in the chat template.

Each conversation is rendered once with `chat_template.render`; the loss falls only on
assistant tokens (and the `<|end|>` closing them), every other target is IGNORE_INDEX.
Conversations longer than the context are split at message boundaries into examples that
each start like a real chat (`<|bos|>`, the system message if any, and the user turn an
assistant turn answers), so the model never trains on a conversation that starts mid-way.
Examples are padded per batch to the longest one in it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from chatsmith.chat_template import render, validate_messages
from chatsmith.checkpoint import (
    load_checkpoint,
    load_model_weights,
    load_run_tokenizer,
    read_run_info,
)
from chatsmith.data.conversations import train_val_conversations
from chatsmith.errors import ChatsmithError
from chatsmith.models import IGNORE_INDEX, build_model, format_card, model_card
from chatsmith.runtime import seed_everything
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.loop import RunFlags, TrainResult, TrainSettings, train

QUICK_EVAL_EXAMPLES = 128

SFT_DEFAULTS: dict = {
    "base_run": None,
    "data": None,
    "val_data": None,
    "task": None,
    "max_conversations": None,
    "batch_size": 16,
    "grad_accum": 1,
    "lr": 1e-3,
    "warmup_steps": 10,
    "optimizer": "adamw",
    "eval_every": 100,
    "save_every": 200,
    # off: padded batches change length from step to step, and each new length would make
    # torch.compile recompile (on an H200 the first SFT step then ate a 30 s budget)
    "compile": False,
}

Example = tuple[list[int], list[int]]  # (input ids, targets) of equal length


def _example(ids: list[int], mask: list[int]) -> Example:
    """Shift a rendered sequence into (inputs, targets); unlearned targets become IGNORE_INDEX."""
    targets = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
    return ids[:-1], targets


def conversation_examples(tok: Tokenizer, messages: list[dict], seq_len: int) -> list[Example]:
    """Training examples of one conversation, each at most `seq_len` inputs long.

    Examples hold whole messages where they fit; a single message longer than the room left
    is cut at the end. Examples without any assistant token to learn are dropped.
    """
    ids, mask = render(tok, messages)
    if len(ids) <= seq_len + 1:
        return [_example(ids, mask)] if any(mask) else []
    starts = tok.chat.message_starts(ids)
    if starts is None:  # turn boundaries unknown (an imported template): keep the beginning
        ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
        return [_example(ids, mask)] if any(mask[1:]) else []
    spans = list(zip(starts, starts[1:] + [len(ids)], strict=True))  # (start, end) per message
    head = [(0, 1)]  # <|bos|>
    if messages[0]["role"] == "system":
        head.append(spans.pop(0))
    examples: list[Example] = []
    limit = seq_len + 1
    i = 0
    while i < len(spans):
        chunk = list(head)
        # an assistant turn that opens an example keeps the user turn it answers, as context
        if i > 0 and ids[spans[i][0]] == tok.assistant_id:
            chunk.append(spans[i - 1])
        used = sum(b - a for a, b in chunk)
        if used + (spans[i][1] - spans[i][0]) > limit and len(chunk) > len(head):
            chunk.pop()  # the context does not fit along with the answer: drop the context
            used = sum(b - a for a, b in chunk)
        while i < len(spans) and used + spans[i][1] - spans[i][0] <= limit:
            chunk.append(spans[i])
            used += spans[i][1] - spans[i][0]
            i += 1
        if used < limit and i < len(spans) and len(chunk) == len(head):
            a, _ = spans[i]  # a lone message too long for any example: keep its beginning
            chunk.append((a, a + limit - used))
            i += 1
        if len(chunk) == len(head):
            break  # the system prompt alone fills the context: nothing can be learned
        cid = [t for a, b in chunk for t in ids[a:b]]
        cmask = [m for a, b in chunk for m in mask[a:b]]
        if any(cmask[1:]):
            examples.append(_example(cid, cmask))
    return examples


def build_examples(tok: Tokenizer, conversations: list[list[dict]], seq_len: int) -> list[Example]:
    out: list[Example] = []
    for conv in conversations:
        out.extend(conversation_examples(tok, conv, seq_len))
    return out


def pad_batch(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example; padded positions are never learned."""
    width = max(len(x) for x, _ in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for r, (xi, yi) in enumerate(examples):
        x[r, : len(xi)] = torch.tensor(xi)
        y[r, : len(yi)] = torch.tensor(yi)
    return x, y


class SFT:
    """Chat fine-tuning objective: shuffled padded batches, held-out loss on assistant tokens."""

    name = "sft"

    def __init__(
        self,
        train_examples: list[Example],
        val_examples: list[Example],
        tok: Tokenizer,
        batch_size: int,
        seed: int,
        device: torch.device,
    ):
        if not train_examples:
            raise ChatsmithError(
                "no training examples: no conversation has an assistant turn "
                "that fits the model's context"
            )
        if not val_examples:
            raise ChatsmithError(
                "no held-out examples: the held-out conversations have no "
                "assistant turn that fits the model's context"
            )
        self.train, self.val = train_examples, val_examples
        self.tok, self.batch_size, self.seed, self.device = tok, batch_size, seed, device
        self.bytes_per_token = torch.tensor(tok.bytes_per_token, dtype=torch.long)
        self.position = 0  # examples drawn so far; the order is a pure function of (seed, epoch)
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def _index(self, k: int) -> int:
        epoch, i = divmod(k, len(self.train))
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.train), generator=g)
        return int(self._order[i])

    def next_batch(self, model: nn.Module) -> dict:
        batch = [self.train[self._index(self.position + j)] for j in range(self.batch_size)]
        self.position += self.batch_size
        x, y = pad_batch(batch, self.tok.pad_id)
        return {
            "x": x.to(self.device, non_blocking=True),
            "y": y.to(self.device, non_blocking=True),
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return model(batch["x"], batch["y"])[1], {"epoch": self.position / len(self.train)}

    def batch_tokens(self, batch: dict) -> int:
        return int((batch["x"] != self.tok.pad_id).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool) -> dict:
        """Mean loss per assistant token (and bits per byte of assistant text) on held-out chats."""
        examples = self.val if final else self.val[:QUICK_EVAL_EXAMPLES]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        bpt = self.bytes_per_token.to(device)
        nats, n_bytes, n_tokens = 0.0, 0, 0
        for b in range(0, len(examples), self.batch_size):
            x, y = pad_batch(examples[b : b + self.batch_size], self.tok.pad_id)
            x, y = x.to(device), y.to(device)
            _, loss = model(x, y, reduction="none")
            valid = y != IGNORE_INDEX
            nats += float(loss[valid].sum())
            n_bytes += int(bpt[y[valid]].sum())
            n_tokens += int(valid.sum())
        if was_training:
            model.train()
        bpb = nats / (math.log(2) * n_bytes) if n_bytes else float("nan")
        return {"val_loss": nats / max(n_tokens, 1), "val_bpb": bpb, "val_tokens": n_tokens}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def _base_model(base_run: Path):
    """The base run's latest checkpoint and tokenizer, checked for chat fine-tuning."""
    base_run = Path(base_run)
    if not base_run.exists():
        raise ChatsmithError(f"base run {base_run} does not exist")
    info = read_run_info(base_run)
    ckpt = load_checkpoint(base_run, with_state=False)
    if ckpt.model_config.arch != "decoder":
        raise ChatsmithError(
            f"base run {base_run} is a {ckpt.model_config.arch} model; chat needs a decoder"
        )
    try:
        tok = load_run_tokenizer(base_run, ckpt.model_config)
    except ChatsmithError as e:
        raise ChatsmithError(f"base run {base_run} cannot be fine-tuned for chat: {e}") from None
    return info, ckpt, tok


def _conversations(args: dict) -> tuple[list[list[dict]], list[list[dict]]]:
    if args.get("task"):
        from chatsmith.data.tasks import get_task  # written alongside; imported only when asked

        task = get_task(args["task"])
        name = args["task"]
        train = [
            validate_messages(c, f"task {name} conversation {i + 1}", need_assistant=True)
            for i, c in enumerate(task.sft_conversations("train"))
        ]
        val = [
            validate_messages(c, f"task {name} held-out conversation {i + 1}", need_assistant=True)
            for i, c in enumerate(task.sft_conversations("val"))
        ]
        limit = args.get("max_conversations")
        return (train[:limit] if limit else train), val
    return train_val_conversations(
        args.get("data"), args.get("val_data"), args.get("max_conversations")
    )


def sft(
    args: dict,
    flags: RunFlags,
    flag_info: dict | None = None,
    quiet: bool = False,
    say=print,
    on_step=None,
) -> TrainResult:
    """Fine-tune `args["base_run"]` on conversations into the new run folder `flags.out`.

    `on_step` is passed to the training loop (for a caller's own progress display)."""
    if not args.get("base_run"):
        raise ChatsmithError("sft needs a base run (a folder written by `chatsmith pretrain`)")
    if args.get("task") and args.get("data"):
        raise ChatsmithError("give --data or --task, not both")
    seed_everything(flags.seed)
    out = Path(flags.out)
    base_run = Path(args["base_run"])
    if not flags.resume and out.resolve() == base_run.resolve():
        raise ChatsmithError("--out must be a new folder, not the base run itself")
    if flags.resume:
        ckpt = load_checkpoint(out, with_state=False)
        cfg = ckpt.model_config
        tok = load_run_tokenizer(out, cfg)
        base_step = read_run_info(out).get("base_step")
    else:
        _, ckpt, tok = _base_model(base_run)
        cfg, base_step = ckpt.model_config, ckpt.step
    train_convs, val_convs = _conversations(args)
    seq_len = cfg.max_seq_len
    train_examples = build_examples(tok, train_convs, seq_len)
    val_examples = build_examples(tok, val_convs, seq_len)
    model = build_model(cfg)
    if not flags.resume:
        load_model_weights(model, ckpt)  # the loop loads the SFT checkpoint itself on resume
        out.mkdir(parents=True, exist_ok=True)
        tok.save_beside(out)  # with an imported run's chat format
    objective = SFT(train_examples, val_examples, tok, args["batch_size"], flags.seed, flags.device)
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
    learn = sum(sum(1 for t in y if t != IGNORE_INDEX) for _, y in train_examples)
    say(
        f"data: {len(train_convs):,} conversations -> {len(train_examples):,} examples "
        f"({learn:,} assistant tokens to learn); held-out: {len(val_convs):,} conversations, "
        f"{len(val_examples):,} examples"
    )
    say(format_card(model_card(cfg, model)))
    info = {
        "stage": "sft",
        "args": {**args, "base_run": str(base_run)},
        "flags": flag_info or {},
        "base_run": str(base_run),
        "base_step": base_step,
    }
    return train(model, cfg, objective, settings, flags, info, quiet=quiet, on_step=on_step)

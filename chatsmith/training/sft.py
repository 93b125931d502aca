"""Supervised fine-tuning: teach a pretrained model to answer, turn by turn, in the chat template.

Each conversation is rendered once with `chat_template.render`; the loss falls only on
assistant tokens (and the `<|end|>` closing them), every other target is IGNORE_INDEX.
Conversations longer than the context are split at message boundaries into examples that
each start like a real chat (`<|bos|>`, the system message if any, and the user turn an
assistant turn answers), so the model never trains on a conversation that starts mid-way.
Examples are padded per batch to the longest one in it.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import torch
from torch import nn

from chatsmith.chat_template import render, validate_messages
from chatsmith.checkpoint import data_fingerprint
from chatsmith.data.batching import EpochOrder, pad_right
from chatsmith.data.conversations import train_val_conversations
from chatsmith.data.tasks import get_task
from chatsmith.errors import ChatsmithError
from chatsmith.inference.scoring import score_batches
from chatsmith.models import IGNORE_INDEX, format_card, model_card
from chatsmith.reporting import Reporter
from chatsmith.runtime import seed_everything
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.config import RunConfig, SFTConfig
from chatsmith.training.loop import TrainResult, train
from chatsmith.training.parallel import ParallelPlan, plan_from_env
from chatsmith.training.start import start_model

QUICK_EVAL_EXAMPLES = 128

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


def pad_examples(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest example; padded positions are never learned."""
    return pad_right([x for x, _ in examples], pad_id), pad_right(
        [y for _, y in examples], IGNORE_INDEX
    )


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
        plan: ParallelPlan | None = None,
    ):
        """`batch_size` is the global batch; this process draws its plan's slice of it."""
        self.rank, self.world = (plan.rank, plan.world) if plan is not None else (0, 1)
        if batch_size % self.world:
            raise ChatsmithError(
                f"batch size {batch_size} does not split evenly over {self.world} processes"
            )
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
        self.position = 0  # examples drawn so far: the whole loader state
        self.order = EpochOrder(len(self.train), seed)

    def next_batch(self, model: nn.Module) -> dict:
        local = self.batch_size // self.world
        first = self.position + self.rank * local
        batch = [self.train[self.order[first + j]] for j in range(local)]
        self.position += self.batch_size
        x, y = pad_examples(batch, self.tok.pad_id)
        return {
            "x": x.to(self.device, non_blocking=True),
            "y": y.to(self.device, non_blocking=True),
            # counted here, on the host: counting on the device would wait for it every step
            "tokens": int((x != self.tok.pad_id).sum()),
        }

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        return model(batch["x"], batch["y"])[1], {"epoch": self.position / len(self.train)}

    def batch_tokens(self, batch: dict) -> int:
        return batch["tokens"]

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        """Mean loss per assistant token (and bits per byte of assistant text) on held-out chats."""
        examples = self.val if final else self.val[:QUICK_EVAL_EXAMPLES]
        batches = (
            pad_examples(examples[b : b + self.batch_size], self.tok.pad_id)
            for b in range(0, len(examples), self.batch_size)
        )
        score = score_batches(model, batches, self.bytes_per_token)
        return {"val_loss": score.loss, "val_bpb": score.bpb, "val_tokens": score.tokens}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


def _conversations(config: SFTConfig) -> tuple[list[list[dict]], list[list[dict]]]:
    if config.task:
        name = config.task
        task = get_task(name)
        train = [
            validate_messages(c, f"task {name} conversation {i + 1}", need_assistant=True)
            for i, c in enumerate(task.sft_conversations("train"))
        ]
        val = [
            validate_messages(c, f"task {name} held-out conversation {i + 1}", need_assistant=True)
            for i, c in enumerate(task.sft_conversations("val"))
        ]
        limit = config.max_conversations
        return (train[:limit] if limit else train), val
    return train_val_conversations(config.data, config.val_data, config.max_conversations)


def sft(config: SFTConfig, run: RunConfig, reporter: Reporter | None = None) -> TrainResult:
    """Fine-tune `config.base_run` on conversations into the new run folder `run.out`."""
    reporter = reporter or Reporter()
    if not config.base_run and not run.resume:
        raise ChatsmithError("sft needs a base run (a folder written by `chatsmith pretrain`)")
    if config.task and config.data:
        raise ChatsmithError("give --data or --task, not both")
    seed_everything(run.seed)
    plan = plan_from_env(run.parallel, run.device, run.activation_checkpointing)
    start = start_model(run, config.base_run, "fine-tuned for chat")
    cfg, tok = start.cfg, start.tokenizer
    if run.resume:
        base_run, base_step = start.base_info.get("base_run"), start.base_info.get("base_step")
    else:
        base_run, base_step = str(config.base_run), start.checkpoint.step
    train_convs, val_convs = _conversations(config)
    train_examples = build_examples(tok, train_convs, cfg.max_seq_len)
    val_examples = build_examples(tok, val_convs, cfg.max_seq_len)
    objective = SFT(
        train_examples, val_examples, tok, config.batch_size, run.seed, plan.device, plan
    )
    learn = sum(sum(1 for t in y if t != IGNORE_INDEX) for _, y in train_examples)
    reporter.say(
        f"data: {len(train_convs):,} conversations -> {len(train_examples):,} examples "
        f"({learn:,} assistant tokens to learn); held-out: {len(val_convs):,} conversations, "
        f"{len(val_examples):,} examples"
    )
    reporter.say(format_card(model_card(cfg, start.model)))
    info = {
        "stage": "sft",
        "args": asdict(config),
        "flags": run.budget(),
        "base_run": base_run,
        "base_step": base_step,
        "data": data_fingerprint(
            train=[seq for ex in train_examples for seq in ex],
            val=[seq for ex in val_examples for seq in ex],
        ),
    }
    run = replace(run, device=plan.device)  # cuda:LOCAL_RANK under torchrun
    try:
        return train(start.model, cfg, objective, config, run, info, reporter, plan)
    finally:
        plan.close()

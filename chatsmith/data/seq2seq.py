"""Sequence-to-sequence tasks: (source, target) text pairs for encoder-decoder training.

- `chitchat-reply`: each turn of the built-in conversations -> the reply to it; held out are
  the pairs of the built-in held-out conversations (the same split every stage uses);
- any task with worked answers (`arithmetic`, `arithmetic:LEVEL`, a .py task file): the
  problem -> its worked solution (or answer), checked with the task's own reward;
- a .jsonl file, one pair a line: `{"source": ..., "target": ...}` with an optional
  `"split"` (`train` or `val`); without splits every 10th pair is held out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chatsmith.data import chitchat
from chatsmith.data.splits import SPLITS, TASK_HELD_OUT_EVERY, check_split, split_every
from chatsmith.data.tasks import Task, TaskPrompt, get_task, json_record
from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import Tokenizer

BUILTIN_TASKS = ("chitchat-reply", "arithmetic")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    problem: TaskPrompt | None = None  # set when a task's reward can check a reply


class Seq2SeqTask:
    name: str = "seq2seq"

    def pairs(self, split: str) -> list[Pair]:
        raise NotImplementedError

    def texts(self) -> list[str]:
        """The training text, to train a tokenizer on."""
        return [f"{p.source}\n{p.target}" for p in self.pairs("train")]

    def correct(self, pair: Pair, reply: str) -> bool:
        """Whether a generated reply is right: the task's reward when it has one, else the
        reply equals the target (ignoring case, spacing and a final full stop)."""
        return (
            " ".join(reply.split()).rstrip(".").casefold()
            == " ".join(pair.target.split()).rstrip(".").casefold()
        )


class ChitchatReply(Seq2SeqTask):
    name = "chitchat-reply"

    def texts(self) -> list[str]:
        return chitchat.documents("train")  # every turn once: the pretraining corpus

    def pairs(self, split: str) -> list[Pair]:
        return [
            Pair(turns[i], turns[i + 1])
            for turns in chitchat.conversations(split)
            for i in range(len(turns) - 1)
        ]


class FromTask(Seq2SeqTask):
    """A task with checkable answers as pairs: problem -> worked solution (else the answer)."""

    def __init__(self, task: Task):
        self.task, self.name = task, task.name

    def pairs(self, split: str) -> list[Pair]:
        out = []
        for p in self.task.prompts(split):
            target = p.solution if p.solution is not None else p.answer
            if target is None or not str(target).strip():
                raise ChatsmithError(f"task {self.name} has no answers to learn from")
            out.append(Pair(p.prompt, str(target), p))
        return out

    def correct(self, pair: Pair, reply: str) -> bool:
        from chatsmith.data.tasks import SOLVED, safe_reward

        return safe_reward(self.task, pair.problem, reply)[0] >= SOLVED


class JsonlPairs(Seq2SeqTask):
    def __init__(self, path: Path):
        self.path, self.name = Path(path), Path(path).stem
        self.items: list[tuple[str | None, Pair]] = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ChatsmithError(f"cannot read {self.path}: {e}") from None
        for n, line in enumerate(lines, start=1):
            if line.strip():
                self.items.append(self._parse(line, f"{self.path}:{n}"))
        if not self.items:
            raise ChatsmithError(f"{self.path}: no pairs in the file")

    @staticmethod
    def _parse(line: str, where: str) -> tuple[str | None, Pair]:
        obj = json_record(line, where, ("source", "target"))
        for key in ("source", "target"):
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise ChatsmithError(f"{where}: {key!r} must be a non-empty string")
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise ChatsmithError(f"{where}: unknown split {split!r}; use train or val")
        return split, Pair(obj["source"], obj["target"])

    def pairs(self, split: str) -> list[Pair]:
        check_split(split)
        if any(s is not None for s, _ in self.items):
            return [p for s, p in self.items if (s or "train") == split]
        return split_every([p for _, p in self.items], split, TASK_HELD_OUT_EVERY)


def pair_ids(tok: Tokenizer, pairs: list[Pair], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Token ids of each pair, cut so that a decoder-only model fits source, separator and
    target in `seq_len` too: the source keeps its last half-context, the target (ending with
    the end token) its first; both families then predict exactly the same target tokens."""
    half = seq_len // 2
    sources = tok.encode_batch([p.source for p in pairs])
    targets = tok.encode_batch([p.target for p in pairs])
    return [(s[-(half - 1) :], [*t[: half - 2], tok.end_id]) for s, t in zip(sources, targets)]


def get_seq2seq_task(name: str) -> Seq2SeqTask:
    """`chitchat-reply`, a task with worked answers (see `get_task`), or a .jsonl of pairs."""
    name = str(name).strip()
    if name == "chitchat-reply":
        return ChitchatReply()
    if name.endswith(".jsonl"):
        if not Path(name).is_file():
            raise ChatsmithError(f"task file {name} does not exist")
        return JsonlPairs(Path(name))
    try:
        return FromTask(get_task(name))
    except ChatsmithError as e:
        raise ChatsmithError(
            f"{e}; sequence-to-sequence tasks are chitchat-reply, arithmetic, a .py task "
            'or a .jsonl of {"source", "target"} lines'
        ) from None

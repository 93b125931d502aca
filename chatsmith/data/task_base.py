"""What a task is: a problem (`TaskPrompt`), the `Task` base class with its default reward, and
the answer matching every task shares (numbers read from a reply, exact or regex matches).

Concrete tasks build on it: `chatsmith.data.arithmetic` (built in) and the file-backed tasks of
`chatsmith.data.tasks`, which also names them (`get_task`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from chatsmith.errors import ChatsmithError

SOLVED = 1.0
MATCHES = ("exact", "numeric", "regex")

# A number, possibly negative and with thousands separators. A minus sign right after a digit or
# letter is an operator ("10-3"), not a sign, hence the look-behind.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class TaskPrompt:
    """One problem: the user's message and, when the task knows it, the expected answer."""

    prompt: str
    answer: str | None = None
    match: str = "exact"
    solution: str | None = None  # worked reply for supervised warm-up

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]


def parse_number(text: str) -> float | None:
    try:
        return float(str(text).replace(",", "").strip())
    except ValueError:
        return None


def final_number(reply: str) -> float | None:
    """The last number written in `reply` (commas as thousands separators, sign kept), or None."""
    found = _NUMBER.findall(reply)
    return parse_number(found[-1]) if found else None


def numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=0, abs_tol=1e-9)


def _normalise(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


def match_reply(reply: str, answer: str, match: str) -> bool:
    """Whether `reply` gives `answer` under the matching rule."""
    if match == "numeric":
        return numbers_equal(final_number(reply), parse_number(answer))
    if match == "regex":
        return re.search(answer, reply) is not None
    return _normalise(reply) == _normalise(answer)


class Task:
    """Base class: subclasses give `name`, `prompts(split)` and usually override `reward`."""

    name: str = "task"

    def prompts(self, split: str) -> list[TaskPrompt]:
        raise NotImplementedError

    def reward(self, prompt: TaskPrompt, reply: str) -> float:
        """1.0 when the reply gives the expected answer, else 0.0. Must be pure."""
        if prompt.answer is None:
            raise ChatsmithError(f"task {self.name}: problem has no answer to check against")
        return 1.0 if match_reply(reply, prompt.answer, prompt.match) else 0.0

    def sft_conversations(self, split: str) -> list[list[dict]]:
        """Worked examples as OpenAI message lists, for `chatsmith sft --task`."""
        out = []
        for p in self.prompts(split):
            reply = p.solution if p.solution is not None else p.answer
            if reply is None or not str(reply).strip():
                raise ChatsmithError(
                    f"task {self.name} has no worked examples (its problems lack answers)"
                )
            out.append([*p.messages(), {"role": "assistant", "content": str(reply)}])
        return out

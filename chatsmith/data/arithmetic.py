"""The built-in `arithmetic` task: generated word and symbol problems with exact answers.

Levels (`arithmetic:1` .. `arithmetic:3`; plain `arithmetic` mixes all three):

1. addition and subtraction of one-digit numbers (never negative);
2. two-digit addition and subtraction (results may be negative), one-digit multiplication;
3. two-step problems such as `(a + b) * c` or `a * b - c`.

About a third of the problems are worded as short stories. The held-out set is fixed (its own
seed) and no held-out problem text appears among the training problems. The reward reads the
last number of the reply and compares it with the answer exactly. Worked replies for SFT show
each step, e.g. `3 + 4 = 7. 7 * 2 = 14.`, so their final number is the answer.
"""

from __future__ import annotations

import random
from functools import lru_cache

from chatsmith.data.splits import check_split
from chatsmith.data.task_base import Task, TaskPrompt, final_number, numbers_equal
from chatsmith.errors import ChatsmithError

LEVELS = (1, 2, 3)
TRAIN_SIZE = 20_000
VAL_SIZE = 200
_SEEDS = {"val": 5_000_017, "train": 5_000_029}

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo")
THINGS = ("apples", "books", "coins", "cards", "pens", "shells", "stamps", "eggs")
SYMBOL_FORMS = ("What is {e}?", "Compute {e}.", "{e} = ?", "Calculate {e}.")


def _one_step(rng: random.Random, level: int) -> tuple[int, str, int]:
    """Two operands and an operator for one step at `level` (1 or 2)."""
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        return a, op, b
    op = rng.choice("+-*")
    if op == "*":
        return rng.randint(2, 9), op, rng.randint(2, 9)
    return rng.randint(10, 99), op, rng.randint(10, 99)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _word_one(rng: random.Random, a: int, op: str, b: int) -> str | None:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if op == "+":
        return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
    if op == "-" and a >= b:
        return f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?"
    if op == "*":
        return f"{name} buys {a} bags with {b} {thing} in each. How many {thing} is that in total?"
    return None  # a negative count makes no story


def make_problem(rng: random.Random, level: int) -> TaskPrompt:
    """One random problem at `level` with its answer and worked solution."""
    if level < 3:
        a, op, b = _one_step(rng, level)
        c = _apply(a, op, b)
        expr = f"{a} {op} {b}"
        prompt = _word_one(rng, a, op, b) if rng.random() < 1 / 3 else None
        if prompt is None:
            prompt = rng.choice(SYMBOL_FORMS).format(e=expr)
        return TaskPrompt(prompt, str(c), "numeric", f"{expr} = {c}.")
    # two steps: (a op1 b) op2 c, the first step small enough to keep numbers readable
    a, op1, b = _one_step(rng, 1 if rng.random() < 0.5 else 2)
    first = _apply(a, op1, b)
    op2 = rng.choice("+-*")
    c = rng.randint(2, 9) if op2 == "*" else rng.randint(1, 20)
    total = _apply(first, op2, c)
    steps = f"{a} {op1} {b} = {first}. {first} {op2} {c} = {total}."
    if rng.random() < 1 / 3 and op1 == "+" and op2 == "-" and total >= 0:
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        prompt = (
            f"{name} has {a} {thing}, gets {b} more, then gives away {c}. "
            f"How many {thing} does {name} have now?"
        )
    else:
        # brackets only where precedence would otherwise change the order of the steps
        first_expr = f"({a} {op1} {b})" if op2 == "*" and op1 != "*" else f"{a} {op1} {b}"
        expr = f"{first_expr} {op2} {c}"
        prompt = rng.choice(SYMBOL_FORMS).format(e=expr)
    return TaskPrompt(prompt, str(total), "numeric", steps)


@lru_cache(maxsize=8)
def _problems(levels: tuple[int, ...], split: str) -> tuple[TaskPrompt, ...]:
    rng = random.Random(_SEEDS[split] + 31 * sum(10**i * lv for i, lv in enumerate(levels)))
    seen = set() if split == "val" else {p.prompt for p in _problems(levels, "val")}
    want = VAL_SIZE if split == "val" else TRAIN_SIZE
    out: list[TaskPrompt] = []
    tries = 0
    # small levels have fewer distinct problems than `want`; stop when new ones dry up
    while len(out) < want and tries < want * 20:
        tries += 1
        p = make_problem(rng, levels[len(out) % len(levels)])
        if p.prompt in seen:
            continue
        if split == "val":
            seen.add(p.prompt)
        out.append(p)
    return tuple(out)


class ArithmeticTask(Task):
    """Generated arithmetic with an exact check of the reply's final number."""

    def __init__(self, level: str | int | None = None):
        if level in (None, "", "all"):
            self.levels: tuple[int, ...] = LEVELS
            self.name = "arithmetic"
        else:
            try:
                lv = int(level)
            except (TypeError, ValueError):
                lv = -1
            if lv not in LEVELS:
                raise ChatsmithError(f"unknown arithmetic level {level!r}; use 1, 2 or 3")
            self.levels, self.name = (lv,), f"arithmetic:{lv}"

    def prompts(self, split: str) -> list[TaskPrompt]:
        check_split(split)
        return list(_problems(self.levels, split))

    def reward(self, prompt: TaskPrompt, reply: str) -> float:
        return 1.0 if numbers_equal(final_number(reply), float(prompt.answer)) else 0.0

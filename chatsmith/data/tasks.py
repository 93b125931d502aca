"""Tasks with checkable answers: prompts, a pure reward function, and worked examples.

A task is what RL trains on and what `chatsmith eval --task` scores. Three kinds exist:

- built-in: `arithmetic` (or `arithmetic:LEVEL`), see `chatsmith.data.arithmetic`;
- a JSONL file, one problem a line: `{"prompt": ..., "answer": ...}` with optional
  `"match"` (`exact`, `numeric` or `regex`; default numeric when the answer is a number,
  else exact), `"split"` (`train` or `val`) and `"solution"` (a worked reply for SFT); a line
  may instead be GSM8K-style, `{"question": ..., "answer": "worked steps #### 72"}`: SFT learns
  the steps, the reward checks the final number (see `gsm8k_record`);
- a Python file defining one class with `prompts()` (or `prompts(split)`) and
  `reward(prompt, reply)`; `prompts` yields strings or `{"prompt", "answer"}` dicts.

Without explicit splits, every 10th problem is held out (`data.splits`), so the split never
changes. The base class and answer matching live in `chatsmith.data.task_base`.
Rewards are floats; a reply counts as solved (for pass@k) when its reward is at least 1.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import re
from pathlib import Path

from chatsmith.data.arithmetic import ArithmeticTask
from chatsmith.data.splits import SPLITS, TASK_HELD_OUT_EVERY, check_split, split_every
from chatsmith.data.task_base import (
    MATCHES,
    SOLVED,
    Task,
    TaskPrompt,
    final_number,
    match_reply,
    numbers_equal,
    parse_number,
)
from chatsmith.errors import ChatsmithError

__all__ = [
    "SOLVED",
    "ArithmeticTask",
    "Task",
    "TaskPrompt",
    "final_number",
    "get_task",
    "match_reply",
    "numbers_equal",
    "safe_reward",
]


class JsonlTask(Task):
    """Problems from a JSONL file; see the module docstring for the fields."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.stem
        self.items: list[tuple[str | None, TaskPrompt]] = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                self.items.append(self._parse_line(line, n))
        if not self.items:
            raise ChatsmithError(f"{self.path}: no problems in the file")

    def _parse_line(self, line: str, n: int) -> tuple[str | None, TaskPrompt]:
        where = f"{self.path}:{n}"
        obj = json_record(line, where, ("answer",))
        if "prompt" not in obj and "question" in obj:
            obj = gsm8k_record(obj, where)
        if "prompt" not in obj:
            raise ChatsmithError(f"{where}: missing field 'prompt'")
        prompt, answer = obj["prompt"], obj["answer"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ChatsmithError(f"{where}: 'prompt' must be a non-empty string")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise ChatsmithError(f"{where}: 'answer' must be a string or a number")
        answer = str(answer)
        match = obj.get("match") or ("numeric" if parse_number(answer) is not None else "exact")
        if match not in MATCHES:
            raise ChatsmithError(f"{where}: unknown match {match!r}; use {', '.join(MATCHES)}")
        if match == "regex":
            try:
                re.compile(answer)
            except re.error as e:
                raise ChatsmithError(f"{where}: answer is not a valid regex ({e})") from None
        if match == "numeric" and parse_number(answer) is None:
            raise ChatsmithError(f"{where}: numeric match needs a number, got {answer!r}")
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise ChatsmithError(f"{where}: unknown split {split!r}; use train or val")
        solution = obj.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise ChatsmithError(f"{where}: 'solution' must be a string")
        return split, TaskPrompt(prompt, answer, match, solution)

    def prompts(self, split: str) -> list[TaskPrompt]:
        check_split(split)
        if any(s is not None for s, _ in self.items):
            # explicit splits: unmarked problems train
            return [p for s, p in self.items if (s or "train") == split]
        return split_every([p for _, p in self.items], split, TASK_HELD_OUT_EVERY)

    def sft_conversations(self, split: str) -> list[list[dict]]:
        out = []
        for p in self.prompts(split):
            if p.match == "regex" and p.solution is None:
                raise ChatsmithError(
                    f"{self.path}: regex answers are not replies; add a 'solution' field for SFT"
                )
            reply = p.solution if p.solution is not None else p.answer
            out.append([*p.messages(), {"role": "assistant", "content": reply}])
        return out


class PythonTask(Task):
    """Adapter around a user class with `prompts()` and `reward(prompt, reply)`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = self.path.stem
        spec = importlib.util.spec_from_file_location(f"chatsmith_user_task_{self.name}", self.path)
        if spec is None or spec.loader is None:
            raise ChatsmithError(f"{self.path}: cannot load as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # user code: any failure is bad input, reported in one line
            raise ChatsmithError(
                f"{self.path}: failed to import ({type(e).__name__}: {e})"
            ) from None
        classes = [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__ == module.__name__
            and callable(getattr(c, "prompts", None))
            and callable(getattr(c, "reward", None))
        ]
        if len(classes) != 1:
            raise ChatsmithError(
                f"{self.path}: expected exactly one class with prompts() and reward(prompt, reply),"
                f" found {len(classes)}"
            )
        try:
            self.user = classes[0]()
        except Exception as e:
            raise ChatsmithError(
                f"{self.path}: cannot create {classes[0].__name__}() ({e})"
            ) from None
        self.name = getattr(self.user, "name", None) or self.name
        self._cache: dict[str, list[TaskPrompt]] = {}

    def _call_prompts(self, split: str | None) -> list[TaskPrompt]:
        try:
            raw = list(self.user.prompts(split) if split else self.user.prompts())
        except Exception as e:
            raise ChatsmithError(
                f"{self.path}: prompts() failed ({type(e).__name__}: {e})"
            ) from None
        out = []
        for i, item in enumerate(raw, start=1):
            if isinstance(item, TaskPrompt):
                out.append(item)
            elif isinstance(item, str) and item.strip():
                out.append(TaskPrompt(item))
            elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
                ans = item.get("answer")
                out.append(
                    TaskPrompt(
                        item["prompt"],
                        None if ans is None else str(ans),
                        item.get("match", "exact"),
                        item.get("solution"),
                    )
                )
            else:
                raise ChatsmithError(
                    f"{self.path}: prompts() item {i} is neither a string nor a dict with 'prompt'"
                )
        return out

    def prompts(self, split: str) -> list[TaskPrompt]:
        check_split(split)
        if split not in self._cache:
            takes_split = len(inspect.signature(self.user.prompts).parameters) >= 1
            if takes_split:
                self._cache[split] = self._call_prompts(split)
            else:
                self._cache[split] = split_every(
                    self._call_prompts(None), split, TASK_HELD_OUT_EVERY
                )
        return self._cache[split]

    def reward(self, prompt: TaskPrompt, reply: str) -> float:
        return self.user.reward(prompt.prompt, reply)

    def sft_conversations(self, split: str) -> list[list[dict]]:
        if callable(getattr(self.user, "sft_conversations", None)):
            return self.user.sft_conversations(split)
        return super().sft_conversations(split)


def json_record(line: str, where: str, keys: tuple[str, ...]) -> dict:
    """One JSONL line of a task file as an object holding `keys`; else one error naming
    `where` (file:line)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ChatsmithError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ChatsmithError(f"{where}: expected an object with {' and '.join(keys)}")
    for key in keys:
        if key not in obj:
            raise ChatsmithError(f"{where}: missing field {key!r}")
    return obj


# GSM8K's worked answers end "#### 72" and mark calculator calls as "<<48/2=24>>"
_GSM8K_FINAL = re.compile(r"\n?\s*####\s*(.+?)\s*$", re.S)
_GSM8K_CALC = re.compile(r"<<[^>]*>>")


def gsm8k_record(obj: dict, where: str) -> dict:
    """A GSM8K-style line, {"question", "answer": "worked steps ... #### 72"}, as a task line:
    the question is the prompt, the number after #### the answer (matched numerically) and the
    steps, with calculator marks removed and "The answer is 72." appended, the SFT reply."""
    question, worked = obj["question"], obj["answer"]
    if not isinstance(worked, str) or not (found := _GSM8K_FINAL.search(worked)):
        raise ChatsmithError(
            f"{where}: a 'question' line needs an 'answer' ending in '#### <final number>'"
        )
    final = found.group(1).replace(",", "")
    if parse_number(final) is None:
        raise ChatsmithError(f"{where}: the answer after #### must be a number, got {final!r}")
    steps = _GSM8K_CALC.sub("", worked[: found.start()]).strip()
    solution = f"{steps}\nThe answer is {final}." if steps else f"The answer is {final}."
    return {**obj, "prompt": question, "answer": final, "match": "numeric", "solution": solution}


def get_task(name_or_path: str) -> Task:
    """A built-in task by name (`arithmetic`, `arithmetic:LEVEL`) or a .jsonl / .py task file."""
    name = str(name_or_path).strip()
    if name == "arithmetic" or name.startswith("arithmetic:"):
        level = name.partition(":")[2] or None
        return ArithmeticTask(level)
    path = Path(name)
    if path.suffix in (".jsonl", ".py"):
        if not path.is_file():
            raise ChatsmithError(f"task file {path} does not exist")
        return JsonlTask(path) if path.suffix == ".jsonl" else PythonTask(path)
    raise ChatsmithError(
        f"unknown task {name!r}: use arithmetic, arithmetic:LEVEL (1-3), a .jsonl or a .py file"
    )


def safe_reward(task: Task, prompt: TaskPrompt, reply: str) -> tuple[float, str | None]:
    """The reward, or 0.0 and a one-line reason when the reward function fails or returns junk.

    A crashing checker must never stop a training run; the reason is for the log.
    """
    try:
        value = task.reward(prompt, reply)
    except Exception as e:
        return 0.0, f"reward raised {type(e).__name__}: {e}"
    if isinstance(value, bool):
        return float(value), None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0, f"reward returned {type(value).__name__} {value!r}, not a finite number"
    return float(value), None

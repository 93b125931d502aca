"""Checkable tasks: the numeric checker, built-in arithmetic, user task files, pass@k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatsmith.data.arithmetic import ArithmeticTask
from chatsmith.data.tasks import (
    TaskPrompt,
    final_number,
    get_task,
    match_reply,
    safe_reward,
)
from chatsmith.errors import ChatsmithError
from chatsmith.inference.tasks import evaluate_task, pass_at_k

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("3 + 4 = 7", 7),
        ("12 apples, no wait, 13.", 13),  # several numbers: the last one counts
        ("The total is 1,234.", 1234),  # thousands separators
        ("1,000,000 exactly", 1_000_000),
        ("It is -5", -5),
        ("x = -12.", -12),
        ("10-3", 3),  # a minus between digits is subtraction, not a sign
        ("0.5 of it", 0.5),
        ("I don't know", None),
        ("", None),
        ("between 3 and 4, 5", 5),  # a comma followed by a space is not a separator
    ],
)
def test_final_number_on_tricky_replies(reply, expected):
    assert final_number(reply) == expected


def test_arithmetic_reward_reads_the_final_number():
    task = ArithmeticTask()
    p = TaskPrompt("What is 9 - 12?", "-3", "numeric")
    assert task.reward(p, "9 - 12 = -3.") == 1.0
    assert task.reward(p, "9 - 12 = 3.") == 0.0
    assert task.reward(p, "-3, I think. Or 4") == 0.0
    assert task.reward(p, "no idea") == 0.0
    big = TaskPrompt("What is 50 * 30?", "1500", "numeric")
    assert task.reward(big, "That is 1,500.") == 1.0


def test_arithmetic_split_is_fixed_and_disjoint():
    for level in (None, "1", "2", "3"):
        task = ArithmeticTask(level)
        val, train = task.prompts("val"), task.prompts("train")
        assert len(val) == 200 and len(train) > 1000
        assert val == ArithmeticTask(level).prompts("val")  # same held-out set every time
        assert not {p.prompt for p in val} & {p.prompt for p in train}
        # every worked solution is right by the task's own checker
        assert all(task.reward(p, p.solution) == 1.0 for p in val)
    # levels differ in difficulty: level 1 answers are small, level 3 has two steps
    assert all(0 <= float(p.answer) <= 18 for p in ArithmeticTask(1).prompts("val"))
    assert all(p.solution.count("=") == 2 for p in ArithmeticTask(3).prompts("val"))


def test_arithmetic_sft_conversations():
    convs = get_task("arithmetic").sft_conversations("val")
    assert len(convs) == 200
    user, assistant = convs[0]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert final_number(assistant["content"]) is not None


def test_unknown_task_and_level():
    with pytest.raises(ChatsmithError, match="unknown task"):
        get_task("chess")
    with pytest.raises(ChatsmithError, match="level"):
        get_task("arithmetic:9")
    with pytest.raises(ChatsmithError, match="does not exist"):
        get_task("/nowhere/task.jsonl")
    with pytest.raises(ChatsmithError, match="split"):
        get_task("arithmetic").prompts("test")


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_task_matching_and_splits(tmp_path):
    rows = [{"prompt": f"What is {i} + 1?", "answer": i + 1} for i in range(18)]
    rows += [
        {"prompt": "Capital of France?", "answer": "Paris"},
        {"prompt": "Say a colour.", "answer": "^(red|blue)\\b", "match": "regex"},
    ]
    task = get_task(str(_write_jsonl(tmp_path / "t.jsonl", rows)))
    assert task.name == "t"
    val, train = task.prompts("val"), task.prompts("train")
    assert len(val) == 2 and len(train) == 18  # every 10th problem is held out
    num, exact, rx = train[0], train[-1], val[1]
    assert num.match == "numeric" and task.reward(num, "0 + 1 = 1") == 1.0
    assert exact.match == "exact" and exact.answer == "Paris"
    assert task.reward(exact, " paris. ") == 1.0 and task.reward(exact, "Lyon") == 0.0
    assert rx.match == "regex" and task.reward(rx, "blue sky") == 1.0
    assert task.reward(rx, "green") == 0.0
    with pytest.raises(ChatsmithError, match="solution"):
        task.sft_conversations("val")  # a regex is not a reply to learn
    split = get_task(
        str(
            _write_jsonl(
                tmp_path / "s.jsonl",
                [
                    {"prompt": "a", "answer": "1", "split": "val"},
                    {"prompt": "b", "answer": "2"},
                ],
            )
        )
    )
    assert [p.prompt for p in split.prompts("val")] == ["a"]
    assert split.sft_conversations("train")[0][1] == {"role": "assistant", "content": "2"}
    assert match_reply("It is 2", "2", "numeric")


def test_gsm8k_style_lines(tmp_path):
    worked = "She sold 48 / 2 = <<48/2=24>>24 in May.\nIn all 48 + 24 = <<48+24=72>>72.\n#### 1,072"
    rows = [{"question": "How many clips?", "answer": worked, "split": "val"}]
    rows += [{"question": f"What is {i} + 2?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
             for i in range(3)]  # fmt: skip
    task = get_task(str(_write_jsonl(tmp_path / "g.jsonl", rows)))
    (val,) = task.prompts("val")
    assert (val.prompt, val.answer, val.match) == ("How many clips?", "1072", "numeric")
    # SFT learns the steps without calculator marks, ending in the final number
    assert val.solution == "She sold 48 / 2 = 24 in May.\nIn all 48 + 24 = 72.\nThe answer is 1072."
    assert task.reward(val, val.solution) == 1.0 and task.reward(val, "It is 72.") == 0.0
    assert task.reward(val, "The answer is 1,072") == 1.0
    convs = task.sft_conversations("train")
    assert [c[1]["content"] for c in convs][0] == "0 + 2 = 2\nThe answer is 2."
    # the example file in the README stays valid: every worked answer earns its reward
    example = get_task(str(Path(__file__).parents[1] / "examples" / "word_problems.jsonl"))
    problems = example.prompts("train") + example.prompts("val")
    assert len(problems) == 60 and all(example.reward(p, p.solution) == 1.0 for p in problems)
    for answer, message in [("72", "ending in '#### <final number>'"), ("#### many", "a number")]:
        path = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": answer}])
        with pytest.raises(ChatsmithError, match=rf"bad\.jsonl:1: .*{message}"):
            get_task(str(path))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "a", "answer": 1}, {"prompt": "b"}], r"t\.jsonl:2: missing field 'answer'"),
        ([{"prompt": "a", "answer": 1}, "", "{oops"], r"t\.jsonl:3: not valid JSON"),
        ([{"answer": 1}], r"t\.jsonl:1: missing field 'prompt'"),
        ([{"prompt": "", "answer": 1}], r":1: 'prompt' must be a non-empty string"),
        ([{"prompt": "a", "answer": [1]}], r":1: 'answer' must be a string or a number"),
        ([{"prompt": "a", "answer": "x", "match": "fuzzy"}], r":1: unknown match 'fuzzy'"),
        ([{"prompt": "a", "answer": "(", "match": "regex"}], r":1: answer is not a valid regex"),
        ([{"prompt": "a", "answer": "x", "match": "numeric"}], r":1: numeric match needs"),
        ([{"prompt": "a", "answer": 1, "split": "dev"}], r":1: unknown split 'dev'"),
        (["[1, 2]"], r":1: expected an object"),
        ([""], r"no problems"),
    ],
)
def test_jsonl_task_errors_name_the_line(tmp_path, rows, message):
    path = _write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.raises(ChatsmithError, match=message):
        get_task(str(path))


PY_TASK = """
class Shout:
    def prompts(self):
        words = ["hi", "yo", "hey", "ok", "no"]
        return [f"say {w}" for w in words] + [{"prompt": "x", "answer": 1}]

    def reward(self, prompt, reply):
        if reply == "boom":
            raise ValueError("checker crashed")
        if reply == "junk":
            return "very good"
        if reply == "nan":
            return float("nan")
        return float(reply.isupper())
"""


def test_python_task_and_bad_rewards(tmp_path):
    path = tmp_path / "shout.py"
    path.write_text(PY_TASK)
    task = get_task(str(path))
    train, val = task.prompts("train"), task.prompts("val")
    assert len(train) == 5 and len(val) == 1
    p = train[0]
    assert safe_reward(task, p, "HELLO") == (1.0, None)
    assert safe_reward(task, p, "hello") == (0.0, None)
    r, err = safe_reward(task, p, "boom")
    assert r == 0.0 and "ValueError: checker crashed" in err
    r, err = safe_reward(task, p, "junk")
    assert r == 0.0 and "not a finite number" in err
    assert safe_reward(task, p, "nan")[0] == 0.0
    with pytest.raises(ChatsmithError, match="no worked examples"):
        task.sft_conversations("train")


def test_python_task_file_errors(tmp_path):
    none = tmp_path / "none.py"
    none.write_text("class A:\n    pass\n")
    with pytest.raises(ChatsmithError, match="exactly one class"):
        get_task(str(none))
    broken = tmp_path / "broken.py"
    broken.write_text("import nonexistent_module_xyz\n")
    with pytest.raises(ChatsmithError, match="failed to import"):
        get_task(str(broken))


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_evaluate_task_batched_through_engine(tiny_run):
    from chatsmith.inference.loading import load_run

    loaded = load_run(tiny_run, "cpu")
    task = get_task("arithmetic:1")
    kw = dict(samples=3, limit=6, max_new_tokens=8, keep_examples=18)
    batched = evaluate_task(loaded.model, loaded.tokenizer, task, max_batch=18, **kw)
    single = evaluate_task(loaded.model, loaded.tokenizer, task, max_batch=1, **kw)
    # all 18 replies decoded together are the replies decoded one at a time
    assert batched.examples == single.examples and batched.to_dict() == single.to_dict()
    assert len({reply for _, reply, _ in batched.examples}) > 1  # sampled, not all alike
    d = batched.to_dict()
    assert set(d) == {"pass@1", "pass@k", "k", "n"} and d["k"] == 3 and d["n"] == 6
    # the figures follow from the rewards: pass@1 is the share of right replies, pass@3 the
    # share of problems with a right reply among its three
    right = [r >= 1 for _, _, r in batched.examples]
    assert batched.pass1 == pytest.approx(sum(right) / 18)
    assert batched.passk == pytest.approx(sum(any(right[i : i + 3]) for i in range(0, 18, 3)) / 6)
    with pytest.raises(ChatsmithError, match="temperature 0"):
        evaluate_task(
            loaded.model, loaded.tokenizer, get_task("arithmetic"), samples=2, temperature=0.0
        )

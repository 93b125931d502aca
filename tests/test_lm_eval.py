"""The lm-evaluation-harness adapter scores like the run itself, and runs a local YAML task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_cli import assert_clean_error

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from chatsmith.errors import ChatsmithError  # noqa: E402
from chatsmith.evaluation.lm_eval_adapter import ChatsmithLM  # noqa: E402
from chatsmith.inference.engine import Engine, SamplingParams  # noqa: E402
from chatsmith.inference.likelihood import continuation_logprobs  # noqa: E402
from chatsmith.inference.scoring import score_tokens  # noqa: E402

CONTEXT = "Hi, how are you doing"
CHOICES = [" today?", " banana.", " well, thanks!"]


def run_lm_eval(*args: str) -> subprocess.CompletedProcess:
    """The adapter's command (lm-eval's CLI with chatsmith registered), offline."""
    return subprocess.run(
        [sys.executable, "-m", "chatsmith.evaluation.lm_eval_adapter", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )


def request(kind: str, *args) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def lm(tiny_run, one_thread):
    return ChatsmithLM(run=str(tiny_run), device="cpu", batch_size=2)


def test_registered_under_its_name():
    assert get_model("chatsmith") is ChatsmithLM


def run_scoring(lm, text: str) -> float:
    """Total log-probability of BOS + text by the run's own `chatsmith eval` scoring."""
    ids = torch.tensor([lm.tok.bos_id, *lm.tok.encode(text)])
    bpt = torch.tensor(lm.tok.bytes_per_token)
    score = score_tokens(lm.model, ids, bpt, lm.context)
    return -score.loss * score.tokens


def test_rolling_loglikelihood_equals_the_runs_own_scoring(lm):
    text = CONTEXT + CHOICES[2]
    (rolled,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert rolled == pytest.approx(run_scoring(lm, text), rel=1e-5)


def test_loglikelihood_is_the_runs_score_of_the_continuation(lm):
    # chain rule: log p(context + continuation) = log p(context) + log p(continuation | context)
    results = lm.loglikelihood([request("loglikelihood", CONTEXT, c) for c in CHOICES])
    for (lp, greedy), c in zip(results, CHOICES):
        whole, ctx = run_scoring(lm, CONTEXT + c), run_scoring(lm, CONTEXT)
        assert lp == pytest.approx(whole - ctx, rel=1e-4, abs=1e-4)
        assert isinstance(greedy, bool)
    # batching (2 per pass, longest first, right-padded) changes nothing
    alone = [lm.loglikelihood([request("loglikelihood", CONTEXT, c)])[0][0] for c in CHOICES]
    assert [lp for lp, _ in results] == pytest.approx(alone, abs=1e-4)


def test_greedy_flag_matches_greedy_decoding(lm):
    context = [lm.tok.bos_id, *lm.tok.encode(CONTEXT)]
    engine = Engine(lm.model, stop_ids=[])
    greedy = list(engine.generate(context, SamplingParams(max_tokens=3, temperature=0)))
    wrong = greedy[:2] + [(greedy[2] + 1) % lm.tok.vocab_size]
    (lp, is_greedy), (lp_wrong, not_greedy) = continuation_logprobs(
        lm.model, [(context, greedy), (context, wrong)]
    )
    assert is_greedy and not not_greedy
    assert lp > lp_wrong


def test_generation_stops_at_the_until_string(lm):
    sampled = {"do_sample": True, "temperature": 1.0, "max_gen_toks": 12}
    (free,) = lm.generate_until([request("generate_until", CONTEXT, {**sampled, "until": []})])
    assert len(free) > 3, free
    stop = free[2:4]
    (cut,) = lm.generate_until([request("generate_until", CONTEXT, {**sampled, "until": [stop]})])
    assert cut == free[: free.index(stop)]


TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


@pytest.mark.slow
def test_lm_eval_command_on_a_local_yaml_task(tiny_run, tmp_path, lm):
    docs = [
        {"question": CONTEXT, "choices": CHOICES, "answer": 0},
        {"question": "Thank you very", "choices": [" much!", " dog", " seven"], "answer": 0},
    ]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(TASK.format(data=data))
    proc = run_lm_eval(
        *("--model", "chatsmith", "--model_args", f"run={tiny_run}", "--device", "cpu"),
        *("--tasks", "tiny_mc", "--include_path", str(tasks), "--batch_size", "4"),
        *("--output_path", str(tmp_path / "out")),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = (tmp_path / "out").rglob("results_*.json")
    acc = json.loads(result.read_text())["results"]["tiny_mc"]["acc,none"]
    # the same choices, scored by the adapter directly: accuracy must agree
    expected = 0
    for d in docs:
        scores = lm.loglikelihood(
            [request("loglikelihood", d["question"], c) for c in d["choices"]]
        )
        expected += max(range(len(scores)), key=lambda i: scores[i][0]) == d["answer"]
    assert acc == pytest.approx(expected / len(docs))


def test_unknown_task_file_is_one_error_line(tiny_run, tmp_path):
    proc = run_lm_eval(
        *("--model", "chatsmith", "--model_args", f"run={tiny_run}", "--device", "cpu"),
        *("--tasks", str(tmp_path / "nope.yaml")),
    )
    assert_clean_error(proc, "nope.yaml does not exist")


def test_bad_model_args_are_chatsmith_errors(tiny_run, tmp_path):
    with pytest.raises(ChatsmithError, match="unknown --model_args \\['pretrained'\\]"):
        ChatsmithLM(run=str(tiny_run), pretrained="gpt2")
    with pytest.raises(ChatsmithError, match="give the run folder"):
        ChatsmithLM()
    with pytest.raises(ChatsmithError, match="does not exist"):
        ChatsmithLM(run=str(tmp_path / "nope"))

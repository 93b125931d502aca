"""RL with checkable rewards: advantage and loss arithmetic, tiny runs, bad rewards, resume."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import Notes, run_cli, tiny_flags
from safetensors.torch import load_file

from chatsmith.checkpoint import latest_checkpoint_dir, read_run_info
from chatsmith.data.tasks import get_task
from chatsmith.errors import ChatsmithError
from chatsmith.inference.loading import load_run
from chatsmith.inference.tasks import evaluate_task
from chatsmith.reporting import Reporter
from chatsmith.training.config import RLConfig
from chatsmith.training.metrics import read_metrics
from chatsmith.training.rl import GroupRelativeObjective, group_advantages, grpo_loss, rl

# Replies of the tiny chitchat model start with a space about 40% of the time: a reward the
# policy can visibly learn in a few steps.
EASY_TASK = """
class StartWithSpace:
    def prompts(self):
        return [f"Say something about {w}." for w in "cats dogs rain tea work music".split()] * 4

    def reward(self, prompt, reply):
        return 1.0 if reply.startswith(" ") else 0.0
"""

BAD_REWARD_TASK = """
class Flaky:
    def prompts(self):
        return ["Hello there.", "How are you?", "Tell me a story.", "Hi!"] * 3

    def reward(self, prompt, reply):
        if reply.startswith(" "):
            raise RuntimeError("checker bug")
        return "yes" if len(reply) % 2 else 0.5
"""

# Half the prompts score the same whatever the reply (no learning signal); the other half
# reward a leading space, which the tiny model writes about 40% of the time.
HALF_FLAT_TASK = """
class HalfFlat:
    def prompts(self):
        words = "cats dogs rain tea".split()
        return [f"{k} about {w}." for w in words for k in ("Fixed", "Talk")] * 4

    def reward(self, prompt, reply):
        return 1.0 if prompt.startswith("Fixed") else float(reply.startswith(" "))
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def easy_task(tmp_path):
    path = tmp_path / "easy.py"
    path.write_text(EASY_TASK)
    return path


def rl_args(run, task, **over) -> RLConfig:
    args = dict(
        run=str(run),
        task=str(task),
        group_size=4,
        prompts_per_step=4,
        max_new_tokens=6,
        eval_every=4,
        eval_prompts=4,
        save_every=3,
        lr=3e-3,
    )
    args.update(over)
    return RLConfig(**args)


def test_group_advantages_hand_made():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(
        adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-0.75, -0.75, -0.75, 2.25]])
    )
    scaled = group_advantages(rewards, std_normalize=True)
    # group std (1/G) is 0.5 and 1.299: advantages become about +-1 and (-0.577, 1.732)
    assert torch.allclose(scaled[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.allclose(scaled[1], torch.zeros(4))  # a flat group gives no signal, not NaN
    assert torch.allclose(
        scaled[2], torch.tensor([-0.57735, -0.57735, -0.57735, 1.73205]), atol=1e-3
    )


def test_grpo_loss_hand_made():
    # two sequences, three positions; the first position of each is prompt (mask 0)
    nll = torch.tensor([[9.0, 1.0, 2.0], [9.0, 0.5, 7.0]], requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0])
    loss, kl = grpo_loss(nll, mask, adv)
    # token-level: (1*1 + 1*2 + (-2)*0.5) / 3 reply tokens
    assert loss.item() == pytest.approx((1 + 2 - 1) / 3)
    assert kl.item() == 0.0
    loss.backward()
    # d loss / d nll = A / T on reply tokens, 0 elsewhere
    assert torch.allclose(nll.grad, torch.tensor([[0, 1 / 3, 1 / 3], [0, -2 / 3, 0]]))
    # KL: k3 = exp(q - logp) - (q - logp) - 1 with logp = -nll
    ref = torch.tensor([[0.0, -1.0, -1.0], [0.0, -1.5, 0.0]])  # q - logp = 0, 1, 1
    loss2, kl2 = grpo_loss(nll.detach(), mask, adv, ref, kl_coef=0.1)
    diffs = torch.tensor([0.0, 1.0, -1.0])  # q + nll on the reply tokens
    k3 = (torch.exp(diffs) - diffs - 1).sum().item() / 3
    assert kl2.item() == pytest.approx(k3)
    assert loss2.item() == pytest.approx(2 / 3 + 0.1 * k3)
    assert math.isfinite(loss2.item())


@pytest.mark.parametrize("skip", [True, False])
def test_flat_groups_are_dropped_and_more_prompts_sampled(tiny_run, tmp_path, skip):
    path = tmp_path / "half_flat.py"
    path.write_text(HALF_FLAT_TASK)
    loaded = load_run(tiny_run, "cpu")
    config = rl_args(tiny_run, path, prompts_per_step=4, sample_rounds=3, skip_flat_groups=skip)
    objective = GroupRelativeObjective(
        get_task(str(path)), loaded.tokenizer, config, 0, torch.device("cpu")
    )
    trained = sampled = informative = 0.0
    for _ in range(3):
        batch = objective.next_batch(loaded.model)
        adv = batch["adv"].view(-1, config.group_size)  # (groups, G)
        fig = batch["figures"]
        flat = int((adv.abs().sum(1) == 0).sum())
        assert adv.shape[0] == fig["trained_groups"]
        if skip:
            assert flat == 0  # every trained group carries signal
            assert fig["sampled_groups"] in (4, 8, 12)  # whole rounds of 4 prompts
            # it stopped at the first round that filled the step (or after the last round)
            assert fig["trained_groups"] >= 4 or fig["sampled_groups"] == 12
        else:
            assert fig["sampled_groups"] == fig["trained_groups"] == 4
        trained += fig["trained_groups"]
        sampled += fig["sampled_groups"]
        informative += fig["informative"] * fig["sampled_groups"]
    if skip:
        assert trained == round(informative) and sampled > trained  # fixed prompts were dropped
    else:
        assert informative < sampled  # the "Fixed" groups were kept although flat
    assert objective.position == sampled  # every sampled prompt is used up, none twice


def test_group_size_one_is_refused(tiny_run, easy_task, tmp_path):
    with pytest.raises(ChatsmithError, match="group-size 1"):
        rl(
            rl_args(tiny_run, easy_task, group_size=1),
            tiny_flags(tmp_path / "g1", 2),
            Reporter(quiet=True),
        )


def test_unknown_task_is_refused(tiny_run, tmp_path):
    with pytest.raises(ChatsmithError, match="unknown task"):
        rl(rl_args(tiny_run, "chess"), tiny_flags(tmp_path / "x", 2), Reporter(quiet=True))


def test_bad_rewards_score_zero_and_never_stop_the_run(tiny_run, tmp_path):
    task = tmp_path / "flaky.py"
    task.write_text(BAD_REWARD_TASK)
    out = tmp_path / "flaky"
    args = rl_args(tiny_run, task, temperature=0.7, kl=0.1)  # the tempered-policy path too
    notes = Notes()
    result = rl(args, tiny_flags(out, 2), notes)
    assert result.step == 2
    records = [r for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    assert sum(r["reward_errors"] for r in records) > 0  # raised or returned "yes": counted
    assert all(0.0 <= r["reward"] <= 0.5 for r in records)  # ...and scored 0
    assert any("reward failed, scored 0" in line for line in notes.lines)


@pytest.mark.slow
def test_tiny_rl_run_raises_mean_reward(tiny_run, easy_task, tmp_path):
    out = tmp_path / "easy"
    result = rl(
        rl_args(
            tiny_run,
            easy_task,
            group_size=8,
            prompts_per_step=4,
            lr=1e-2,
            eval_every=100,
            save_every=100,
        ),
        tiny_flags(out, 16),
        Reporter(quiet=True),
    )
    rewards = [r["reward"] for r in read_metrics(out / "metrics.jsonl") if "reward" in r]
    assert len(rewards) == 16
    print(rewards)
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, rewards
    # the final held-out pass@1 is what `chatsmith eval --task` reports for the saved model
    loaded = load_run(out, "cpu")
    again = evaluate_task(
        loaded.model, loaded.tokenizer, get_task(str(easy_task)), max_new_tokens=6
    )
    assert result.final_eval["pass@1"] == pytest.approx(again.pass1)
    assert result.final_eval["val_problems"] == again.n
    assert (out / "reward_curve.png").is_file() and (out / "tokenizer.json").is_file()
    info = read_run_info(out)
    assert info["stage"] == "rl" and info["args"]["run"] == str(tiny_run)


@pytest.mark.slow
def test_resume_is_exact(tiny_run, easy_task, tmp_path):
    args = rl_args(tiny_run, easy_task, kl=0.05)
    straight, split = tmp_path / "straight", tmp_path / "split"
    rl(args, tiny_flags(straight, 6), Reporter(quiet=True))
    rl(args, tiny_flags(split, 3), Reporter(quiet=True))
    rl(args, tiny_flags(split, 6, resume=True), Reporter(quiet=True))
    a = load_file(str(latest_checkpoint_dir(straight) / "model.safetensors"))
    b = load_file(str(latest_checkpoint_dir(split) / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in read_metrics(split / "metrics.jsonl") if "reward" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_cli_sft_then_rl_then_eval_task(tiny_run, tmp_path):
    """The whole offline path: worked examples (sft --task), RL, then pass@k."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sft_out, out = tmp_path / "cli_sft", tmp_path / "cli_rl"
    cpu = ["--device", "cpu"]
    r = run_cli(
        "sft",
        str(tiny_run),
        "--task",
        "arithmetic:1",
        "--out",
        str(sft_out),
        "--max-steps",
        "3",
        "--max-conversations",
        "64",
        *cpu,
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert read_run_info(sft_out)["stage"] == "sft" and (sft_out / "latest").is_file()
    r = run_cli(
        "rl",
        str(sft_out),
        "--task",
        "arithmetic:1",
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--group-size",
        "2",
        "--prompts-per-step",
        "2",
        "--max-new-tokens",
        "6",
        *cpu,
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert figures["step"] == 2 and figures["reward_curve"].endswith("reward_curve.png")
    r = run_cli(
        "eval",
        str(out),
        "--task",
        "arithmetic:1",
        "--samples",
        "2",
        "--max-new-tokens",
        "6",
        *cpu,
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d) == {"pass@1", "pass@k", "k", "n"} and d["k"] == 2 and d["n"] == 200
    r = run_cli(
        "rl",
        str(tiny_run),
        "--task",
        "nope",
        "--out",
        str(tmp_path / "bad"),
        "--max-steps",
        "1",
        *cpu,
        env=env,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith(
        "use arithmetic, arithmetic:LEVEL (1-3), a .jsonl or a .py file"
    )
    r = run_cli("rl", "--task", "arithmetic", env=env)
    assert r.returncode == 1 and "give the run to start from" in r.stderr


@pytest.mark.slow
def test_cli_gsm8k_style_file_end_to_end(tiny_run, tmp_path):
    """A user's own numeric task: SFT on the worked answers, RL on the final numbers, pass@k."""
    rows = [
        {"question": f"Ann has {a} cats and gets {b} more. How many?",
         "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
        for a in range(2, 7) for b in range(1, 5)
    ]  # fmt: skip
    task = tmp_path / "cats.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--device", "cpu", "--json"]
    sft_out, rl_out = tmp_path / "g_sft", tmp_path / "g_rl"
    r = run_cli("sft", str(tiny_run), "--task", str(task), "--out", str(sft_out),
                "--max-steps", "4", *common, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = run_cli("rl", str(sft_out), "--task", str(task), "--out", str(rl_out), "--max-steps",
                "2", "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "12",
                *common, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 2
    records = [x for x in read_metrics(rl_out / "metrics.jsonl") if "reward" in x]
    assert [x["step"] for x in records] == [1, 2]
    # flat groups are skipped: each step sampled whole rounds of 2 prompts, at most 4 rounds
    assert all(x["sampled_groups"] in (2, 4, 6, 8) for x in records)
    r = run_cli("eval", str(rl_out), "--task", str(task), "--samples", "3",
                "--max-new-tokens", "12", *common, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["k"] == 3 and d["n"] == 2  # every 10th of the 20 problems is held out
    assert 0.0 <= d["pass@1"] <= d["pass@k"] <= 1.0

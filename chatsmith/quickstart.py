"""`chatsmith quickstart`: the whole path from raw text to a chat model in one command.

Stages: BPE tokenizer and pretraining on the built-in corpus, SFT on its conversations, and a
short sample chat. Sizes and time budgets are picked for the machine found, so that on two
CPU cores the whole run ends well within 15 minutes; a GPU gets a larger model. It drives the
training stages and the inference engine, so it sits beside the CLI, above both.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from chatsmith.data.chitchat import BUILTIN_NAME
from chatsmith.errors import ChatsmithError
from chatsmith.reporting import Reporter
from chatsmith.training.config import DEFAULT_SEED, PretrainConfig, RunConfig, SFTConfig
from chatsmith.training.pretrain import pretrain
from chatsmith.training.sft import sft

SUMMARY_FILE = "quickstart.json"
SAMPLE_PROMPTS = ("Hi! How are you doing today?", "What do you like to do on weekends?")
# stage weights in the one progress display (percent of the whole run)
WEIGHTS = {"tokenizer": 6, "pretrain": 60, "sft": 30, "sample chat": 4}


@dataclass
class QuickPlan:
    """Sizes and budgets of a quickstart run."""

    device: str = "cpu"
    total_minutes: float = 13.0
    overhead_minutes: float = 3.0  # data loading, tokenizing, evaluations, sample chat
    pretrain_share: float = 0.68  # of the training time left after the overhead
    vocab_size: int = 8192
    depth: int | None = 3  # None: the `preset` below
    preset: str | None = None
    seq_len: int = 256
    pretrain_batch: int = 16
    pretrain_lr: float | None = None  # None: the preset's rates (PretrainConfig)
    sft_batch: int = 16
    sft_lr: float = 1e-3
    eval_every: int = 100
    # for tests: fixed step budgets and smaller data instead of the built-in corpus
    pretrain_steps: int | None = None
    sft_steps: int | None = None
    # caps on top of the time budgets: on a GPU the small built-in corpus runs out long before
    # the minutes do, and more epochs would only overfit it
    pretrain_step_cap: int | None = None
    sft_step_cap: int | None = None
    pretrain_data: str = BUILTIN_NAME
    pretrain_val_data: str | None = None
    max_conversations: int | None = None
    sft_val_data: str | None = None
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    sample_tokens: int = 48
    extra: dict = field(default_factory=dict)


def plan_for_machine(device: torch.device, total_minutes: float | None = None) -> QuickPlan:
    """Model and batch sizes that make good use of `total_minutes` on this device."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        plan = QuickPlan(
            device=str(device),
            total_minutes=total_minutes or 8.0,
            overhead_minutes=2.0,
            vocab_size=8192,
            depth=8,
            seq_len=512,
            pretrain_batch=64,
            sft_batch=32,
            pretrain_lr=2e-3,
            sft_lr=5e-4,
            eval_every=250,
            # ~5 epochs of the 3.0M-token corpus at 64 x 512 tokens a step (an H200 ran 642
            # steps, ~7 epochs, in 45 s to 1.59 held-out bpb); SFT: ~2 epochs of 8.4k examples
            pretrain_step_cap=500,
            sft_step_cap=520,
        )
    else:
        # on CPU compute is what runs out: a small model sees more text in the minutes it has
        # 2-3 cores get the pretraining default, the setting that reached the lowest held-out
        # bits per byte in 5 minutes on 2 cores (benchmarks/RESULTS.md)
        depth = 4 if cores >= 8 else 3 if cores >= 4 else None
        plan = QuickPlan(
            device=str(device),
            total_minutes=total_minutes or 13.0,
            depth=depth,
            preset=None if depth else "narrow",
        )
    if plan.total_minutes <= plan.overhead_minutes + 1:
        raise ChatsmithError(
            f"--max-minutes {plan.total_minutes:g} is too short for quickstart; give at least "
            f"{plan.overhead_minutes + 2:g}"
        )
    plan.extra["cpu_cores"] = cores
    return plan


class PipelineReporter(Reporter):
    """One bar for the whole pipeline: each phase (tokenizer, pretrain, sft, sample chat)
    fills its share of it; messages are printed above the bar."""

    def __init__(self, quiet: bool = False):
        super().__init__(quiet)
        self.bar = tqdm(
            total=100,
            disable=quiet,
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}]{postfix}",
        )
        self.done, self.stage = 0.0, ""

    def phase(self, name: str) -> None:
        if name == self.stage or name not in WEIGHTS:
            return
        if self.stage:
            self.done += WEIGHTS[self.stage]
        self.stage = name
        self.bar.set_description_str(f"quickstart: {name}")
        self.fill(0.0)

    def fill(self, fraction: float) -> None:
        """The current phase is `fraction` done."""
        self.bar.n = round(self.done + WEIGHTS[self.stage] * min(max(fraction, 0.0), 1.0), 1)
        self.bar.refresh()

    def shows_tool_progress(self) -> bool:
        return False  # a library's own bars would break the one pipeline bar

    def begin(self, name: str, total: int | None, done: int = 0) -> None:
        self.phase(name)

    def advance(self, step: int, fraction: float, status: str) -> None:
        self.bar.set_postfix_str(f"step {step} | {status.split(' | ')[0]}", refresh=False)
        self.fill(fraction)

    def end(self) -> None:
        """A step loop ended; the bar stays for the next phase (see `close`)."""

    def close(self) -> None:
        self.bar.n = 100
        self.bar.set_postfix_str("done", refresh=False)
        self.bar.close()


def run_quickstart(
    out: Path, plan: QuickPlan, seed: int = DEFAULT_SEED, reporter: Reporter | None = None
) -> dict:
    """Run every stage into `out` (base/ and chat/ run folders) and return the summary.

    `reporter` takes the messages; the progress is shown as one bar for the whole pipeline
    (none when the reporter is quiet)."""
    reporter = reporter or Reporter()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ChatsmithError(f"{out} exists and is not empty; give a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = torch.device(plan.device)
    reporter.say(
        f"quickstart into {out} on {plan.device} ({plan.extra.get('cpu_cores', '?')} CPU cores): "
        f"{f'{plan.depth}-layer' if plan.depth else repr(plan.preset)} model, "
        f"{plan.vocab_size}-token vocabulary, context {plan.seq_len}; "
        f"about {plan.total_minutes:g} minutes in all"
    )
    progress = PipelineReporter(reporter.quiet)
    times: dict[str, float] = {}

    # stage 1+2: tokenizer and pretraining (pretrain trains the tokenizer first)
    progress.phase("tokenizer")
    base = out / "base"
    t = time.perf_counter()
    presult = pretrain(pretrain_config(plan), pretrain_run(plan, base, device, seed), progress)
    times["pretrain"] = time.perf_counter() - t

    # stage 3: SFT, with whatever time the budget still has
    chat_dir = out / "chat"
    srun = sft_run(plan, chat_dir, device, seed, spent_minutes=(time.perf_counter() - t0) / 60)
    t = time.perf_counter()
    sresult = sft(sft_config(plan, base), srun, progress)
    times["sft"] = time.perf_counter() - t

    # stage 4: a short sample chat with the result
    progress.phase("sample chat")
    t = time.perf_counter()
    samples = sample_chat(chat_dir, plan, device, seed, progress)
    times["sample_chat"] = time.perf_counter() - t
    progress.close()

    for s in samples:
        reporter.say(f"you> {s['user']}\nassistant> {s['assistant']}")
    plan_d = asdict(plan)
    plan_d["sample_prompts"] = list(plan.sample_prompts)
    summary = {
        "base_run": str(base),
        "chat_run": str(chat_dir),
        "wall_seconds": time.perf_counter() - t0,
        "stage_seconds": times,
        "plan": plan_d,
        "pretrain": {"steps": presult.step, "tokens": presult.tokens, **presult.final_eval},
        "sft": {"steps": sresult.step, "tokens": sresult.tokens, **sresult.final_eval},
        "samples": samples,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def pretrain_config(plan: QuickPlan) -> PretrainConfig:
    return PretrainConfig(
        data=plan.pretrain_data,
        val_data=plan.pretrain_val_data,
        vocab_size=plan.vocab_size,
        depth=plan.depth,
        preset=plan.preset or PretrainConfig.preset,
        seq_len=plan.seq_len,
        batch_size=plan.pretrain_batch,
        lr=plan.pretrain_lr,
        eval_every=plan.eval_every,
        save_every=10**9,
        warmup_steps=20,
    )


def pretrain_run(plan: QuickPlan, out: Path, device: torch.device, seed: int) -> RunConfig:
    train_minutes = plan.total_minutes - plan.overhead_minutes
    return RunConfig(
        out=out,
        device=device,
        seed=seed,
        max_steps=plan.pretrain_steps or plan.pretrain_step_cap,
        max_minutes=None if plan.pretrain_steps else train_minutes * plan.pretrain_share,
    )


def sft_config(plan: QuickPlan, base: Path) -> SFTConfig:
    return SFTConfig(
        base_run=str(base),
        val_data=plan.sft_val_data,
        max_conversations=plan.max_conversations,
        batch_size=plan.sft_batch,
        lr=plan.sft_lr,
        eval_every=plan.eval_every,
        save_every=10**9,
    )


def sft_run(
    plan: QuickPlan, out: Path, device: torch.device, seed: int, spent_minutes: float
) -> RunConfig:
    """SFT's budget: its share of the training time, within what the whole budget has left."""
    minutes = None
    if not plan.sft_steps:
        train_minutes = plan.total_minutes - plan.overhead_minutes
        # keep two minutes for SFT's data and final evaluation and the sample chat (measured
        # at ~1.7 minutes on two busy CPU cores)
        left = plan.total_minutes - spent_minutes - 2.0
        minutes = max(0.5, min(train_minutes * (1 - plan.pretrain_share), left))
    return RunConfig(
        out=out,
        device=device,
        seed=seed,
        max_steps=plan.sft_steps or plan.sft_step_cap,
        max_minutes=minutes,
    )


def sample_chat(
    chat_dir: Path, plan: QuickPlan, device: torch.device, seed: int, progress: PipelineReporter
) -> list[dict]:
    """One reply of the chat model to each of the plan's sample prompts, in one conversation."""
    from chatsmith.inference.chat import ChatSession
    from chatsmith.inference.engine import SamplingParams
    from chatsmith.inference.loading import load_run

    loaded = load_run(chat_dir, device)
    params = SamplingParams(
        max_tokens=plan.sample_tokens, temperature=0.7, top_k=50, top_p=0.95, seed=seed
    )
    session = ChatSession(loaded.engine(), loaded.tokenizer, params)
    samples = []
    for i, prompt in enumerate(plan.sample_prompts):
        samples.append({"user": prompt, "assistant": session.ask(prompt)})
        progress.fill((i + 1) / len(plan.sample_prompts))
    return samples

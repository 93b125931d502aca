"""The one training loop. Every stage (pretrain, SFT, RL, ...) is an Objective plugged into it.

The loop owns what all stages share: device and precision, optimizer and schedule, gradient
accumulation and clipping, the time/step budget, progress display, metrics, evaluation,
checkpoints and exact resume. An Objective owns what differs: where batches come from, how
the loss is computed, and what "held-out" means.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm

from chatsmith.checkpoint import (
    RUN_FILE,
    check_data_unchanged,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    write_json_atomic,
)
from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig
from chatsmith.runtime import autocast, configure_cuda, rng_state, set_rng_state
from chatsmith.training.metrics import MetricsLog, OverfitWatch, plot_curves
from chatsmith.training.optim import build_optimizers, lr_factor, set_lr
from chatsmith.validation import Field, check_record


class Objective(Protocol):
    """What a training stage plugs into the loop."""

    name: str

    def next_batch(self, model: nn.Module) -> dict:
        """The next training micro-batch (on the model's device); RL samples with `model`."""

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        """Scalar loss to minimize and extra figures to log (floats)."""

    def batch_tokens(self, batch: dict) -> int:
        """Tokens the batch trains on, for the throughput figure."""

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        """Held-out figures (a quick subset unless `final`); `val_loss` feeds the overfit watch."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# what `checkpoint()` below saves besides the model, checked when a run resumes
TRAIN_STATE = {
    "optimizers": Field(list),
    "objective": Field(dict),
    "rng": Field(dict),
    "elapsed": Field(float, lo=0),
    "tokens": Field(int, lo=0),
}


@dataclass
class RunFlags:
    """The flags every training stage takes, with the same meaning everywhere."""

    out: Path
    resume: bool = False
    max_minutes: float | None = None
    max_steps: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 1337
    allow_data_change: bool = False  # resume even if the data's fingerprint differs


@dataclass
class TrainSettings:
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    eval_every: int = 200
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3
    compile: bool | None = None  # None: on for CUDA, off elsewhere


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_seconds: float
    tokens: int
    final_eval: dict
    last_loss: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


def _budget_progress(step: int, elapsed: float, flags: RunFlags) -> float:
    parts = []
    if flags.max_steps:
        parts.append(step / flags.max_steps)
    if flags.max_minutes:
        parts.append(elapsed / (flags.max_minutes * 60))
    return max(parts) if parts else 0.0


def train(
    model: nn.Module,
    cfg: ModelConfig,
    objective: Objective,
    settings: TrainSettings,
    flags: RunFlags,
    run_info: dict,
    quiet: bool = False,
    on_step: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train `model` with `objective` until the step or time budget is spent.

    The caller seeds the RNG (seed_everything) before building the model and objective, so that
    initialisation is reproducible too. `on_step(step, budget_progress, loss)`, if given, is
    called after every optimizer step (for a caller's own progress display).
    """
    if not flags.max_steps and not flags.max_minutes:
        raise ChatsmithError("give a budget: --max-steps and/or --max-minutes")
    run_dir, device = Path(flags.out), flags.device
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_cuda()
    model.to(device)
    optimizers = build_optimizers(
        model,
        settings.optimizer,
        settings.lr,
        settings.weight_decay,
        (settings.beta1, settings.beta2),
        settings.muon_lr,
    )
    step, elapsed, tokens_seen = 0, 0.0, 0
    if flags.resume:
        warn = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        check_data_unchanged(run_dir, run_info.get("data"), flags.allow_data_change, warn)
        ckpt = load_checkpoint(run_dir)
        check_record(ckpt.state, TRAIN_STATE, f"checkpoint {ckpt.path} training state")
        if len(ckpt.state["optimizers"]) != len(optimizers):
            raise ChatsmithError(
                f"checkpoint {ckpt.path} holds {len(ckpt.state['optimizers'])} optimizer "
                f"states but --optimizer {settings.optimizer} uses {len(optimizers)}: resume "
                "with the optimizer the run started with"
            )
        load_model_weights(model, ckpt)
        for opt, sd in zip(optimizers, ckpt.state["optimizers"]):
            opt.load_state_dict(sd)
        objective.load_state_dict(ckpt.state["objective"])
        set_rng_state(ckpt.state["rng"])
        step, elapsed, tokens_seen = ckpt.step, ckpt.state["elapsed"], ckpt.state["tokens"]
    else:
        write_json_atomic(
            run_dir / RUN_FILE, {**run_info, "model": cfg.to_dict(), "train": asdict(settings)}
        )
    use_compile = settings.compile if settings.compile is not None else device.type == "cuda"
    fwd_model = torch.compile(model) if use_compile else model
    metrics = MetricsLog(run_dir, resume_step=step)
    watch = OverfitWatch()

    def checkpoint() -> None:
        state = {
            "optimizers": [opt.state_dict() for opt in optimizers],
            "objective": objective.state_dict(),
            "rng": rng_state(),
            "elapsed": elapsed,
            "tokens": tokens_seen,
        }
        save_checkpoint(run_dir, step, model, cfg, state, settings.keep_last)

    def evaluate(final: bool = False) -> dict:
        with autocast(device):
            result = objective.evaluate(model, final)
        metrics.write({"step": step, **result})
        return result

    bar = tqdm(
        total=flags.max_steps,
        initial=step,
        disable=quiet,
        file=sys.stderr,
        desc=objective.name,
        dynamic_ncols=True,
        unit="step",
    )
    note = (lambda _msg: None) if quiet else (lambda msg: bar.write(msg, file=sys.stderr))
    loss_window: list[float] = []
    step_loss = smooth_loss = math.nan
    model.train()
    while _budget_progress(step, elapsed, flags) < 1.0:
        t0 = time.perf_counter()
        factor = lr_factor(
            step,
            _budget_progress(step, elapsed, flags),
            settings.warmup_steps,
            settings.min_lr_ratio,
        )
        set_lr(optimizers, factor)
        step_loss, step_tokens, extras = 0.0, 0, {}
        for _ in range(settings.grad_accum):
            batch = objective.next_batch(model)
            with autocast(device):
                loss, extras = objective.loss(fwd_model, batch)
            if not torch.isfinite(loss):
                raise ChatsmithError(
                    f"loss became {loss.item()} at step {step}; lower --lr or check the data"
                )
            (loss / settings.grad_accum).backward()
            step_loss += loss.item() / settings.grad_accum
            step_tokens += objective.batch_tokens(batch)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip))
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        elapsed += dt
        step += 1
        tokens_seen += step_tokens
        loss_window.append(step_loss)
        # a smoothed training loss for the overfitting watch: single steps are too noisy
        smooth_loss = step_loss if math.isnan(smooth_loss) else 0.9 * smooth_loss + 0.1 * step_loss
        tok_s = step_tokens / dt
        if step % settings.log_every == 0 or step == 1:
            record = {
                "step": step,
                "loss": sum(loss_window) / len(loss_window),
                "lr_factor": factor,
                "grad_norm": grad_norm,
                "tokens_per_s": tok_s,
                "tokens": tokens_seen,
                "elapsed_s": elapsed,
                **extras,
            }
            metrics.write(record)
            loss_window.clear()
        progress = _budget_progress(step, elapsed, flags)
        eta = elapsed / progress * (1 - progress) if progress > 0 else math.nan
        bar.set_postfix_str(
            f"loss {step_loss:.3f} | {tok_s:,.0f} tok/s | eta {eta:,.0f}s", refresh=False
        )
        bar.update(1)
        if on_step is not None:
            on_step(step, progress, step_loss)
        if step % settings.eval_every == 0 and _budget_progress(step, elapsed, flags) < 1.0:
            result = evaluate()
            note(
                f"step {step}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
            )
            if "val_loss" in result:
                warning = watch.check(smooth_loss, result["val_loss"])
                if warning:
                    note(f"warning: {warning}")
                    metrics.write({"step": step, "warning": warning})
        if step % settings.save_every == 0:
            checkpoint()
    bar.close()
    final = evaluate(final=True)
    checkpoint()
    plot_curves(run_dir)
    return TrainResult(run_dir, step, elapsed, tokens_seen, final, step_loss)

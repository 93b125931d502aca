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
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    write_json_atomic,
)
from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig, model_card
from chatsmith.runtime import autocast, configure_cuda, rng_state, set_rng_state
from chatsmith.training.metrics import MetricsLog, OverfitWatch, plot_curves
from chatsmith.training.optim import build_optimizers, lr_factor, set_lr
from chatsmith.training.parallel import (
    ParallelPlan,
    load_sharded,
    peak_flops,
    save_sharded_checkpoint,
    shard_optimizer_state,
)


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


@dataclass
class RunFlags:
    """The flags every training stage takes, with the same meaning everywhere."""

    out: Path
    resume: bool = False
    max_minutes: float | None = None
    max_steps: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 1337
    parallel: str | None = None  # ddp or fsdp (default ddp under torchrun with WORLD_SIZE > 1)
    activation_checkpointing: bool = False


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
    plan: ParallelPlan | None = None,
) -> TrainResult:
    """Train `model` with `objective` until the step or time budget is spent.

    The caller seeds the RNG (seed_everything) before building the model and objective, so that
    initialisation is reproducible too. `on_step(step, budget_progress, loss)`, if given, is
    called after every optimizer step (for a caller's own progress display). `plan` says how
    this process shares the work with others (one process when None); the caller built the
    objective to draw this rank's slice of each global batch.
    """
    if not flags.max_steps and not flags.max_minutes:
        raise ChatsmithError("give a budget: --max-steps and/or --max-minutes")
    run_dir, device = Path(flags.out), flags.device
    plan = plan or ParallelPlan(
        device=device, activation_checkpointing=flags.activation_checkpointing
    )
    main = plan.is_main
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_cuda()
    model.to(device)
    flops_per_token = model_card(cfg, model)["flops_per_token"]
    ckpt = load_checkpoint(run_dir) if flags.resume else None
    sharded_ckpt = ckpt is not None and ckpt.is_sharded
    if ckpt is not None and not sharded_ckpt:
        load_model_weights(model, ckpt)  # whole weights go in before the model is sharded
    plan.prepare(model)
    optimizers = build_optimizers(
        model,
        settings.optimizer,
        settings.lr,
        settings.weight_decay,
        (settings.beta1, settings.beta2),
        settings.muon_lr,
    )
    step, elapsed, tokens_seen = 0, 0.0, 0
    if ckpt is not None:
        if sharded_ckpt:
            load_sharded(ckpt.path, model, optimizers)
        else:
            for opt, sd in zip(optimizers, ckpt.state["optimizers"]):
                opt.load_state_dict(sd)
            shard_optimizer_state(optimizers)
        objective.load_state_dict(ckpt.state["objective"])
        set_rng_state(ckpt.state["rng"])
        step, elapsed, tokens_seen = ckpt.step, ckpt.state["elapsed"], ckpt.state["tokens"]
    elif main:
        write_json_atomic(
            run_dir / RUN_FILE, {**run_info, "model": cfg.to_dict(), "train": asdict(settings)}
        )
    use_compile = settings.compile if settings.compile is not None else device.type == "cuda"
    fwd_model = plan.forward_model(model)
    fwd_model = torch.compile(fwd_model) if use_compile else fwd_model
    metrics = MetricsLog(run_dir, resume_step=step) if main else None
    watch = OverfitWatch()
    peak = peak_flops(device)

    def checkpoint(final: bool = False) -> None:
        state = {
            "objective": objective.state_dict(),
            "rng": rng_state(),
            "elapsed": elapsed,
            "tokens": tokens_seen,
        }
        if plan.mode == "fsdp":
            save_sharded_checkpoint(
                plan, run_dir, step, model, optimizers, cfg, state, settings.keep_last, final
            )
            return
        if main:
            state["optimizers"] = [opt.state_dict() for opt in optimizers]
            save_checkpoint(run_dir, step, model, cfg, state, settings.keep_last)
        plan.barrier()

    def log(record: dict) -> None:
        if metrics is not None:
            metrics.write(record)

    def evaluate(final: bool = False) -> dict:
        with autocast(device):  # every rank evaluates: FSDP2's forward needs them all
            result = objective.evaluate(model, final)
        log({"step": step, **result})
        return result

    bar = tqdm(
        total=flags.max_steps,
        initial=step,
        disable=quiet or not main,
        file=sys.stderr,
        desc=objective.name,
        dynamic_ncols=True,
        unit="step",
    )
    note = (
        (lambda _msg: None) if quiet or not main else (lambda msg: bar.write(msg, file=sys.stderr))
    )
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
        for micro in range(settings.grad_accum):
            batch = objective.next_batch(model)
            with plan.grad_sync(fwd_model, micro == settings.grad_accum - 1):
                with autocast(device):
                    loss, extras = objective.loss(fwd_model, batch)
                if not torch.isfinite(loss):
                    raise ChatsmithError(
                        f"loss became {loss.item()} at step {step}; lower --lr or check the data"
                    )
                loss = plan.weigh_loss(loss, batch)
                (loss / settings.grad_accum).backward()
            step_loss += loss.item() / settings.grad_accum
            step_tokens += objective.batch_tokens(batch)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        grad_norm = plan.grad_norm(norm)
        for opt in optimizers:
            opt.step()
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        # every rank takes the mean loss, the summed tokens and the slowest clock
        before = elapsed
        step_loss, step_tokens, elapsed = plan.reduce_step(
            step_loss, step_tokens, elapsed + time.perf_counter() - t0
        )
        dt = elapsed - before
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
            if peak is not None:  # model FLOPs utilisation over all ranks' accelerators
                record["mfu"] = tok_s * flops_per_token / (peak * plan.world)
            log(record)
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
                    log({"step": step, "warning": warning})
        if step % settings.save_every == 0:
            checkpoint()
    bar.close()
    final = evaluate(final=True)
    checkpoint(final=True)
    if main:
        plot_curves(run_dir)
    return TrainResult(run_dir, step, elapsed, tokens_seen, final, step_loss)

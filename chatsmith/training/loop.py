"""The one training loop. Every stage (pretrain, SFT, RL, ...) is an Objective plugged into it.

The loop owns what all stages share: device and precision, optimizer and schedule, gradient
accumulation and clipping, the time/step budget, progress display, metrics, evaluation,
checkpoints and exact resume. An Objective owns what differs: where batches come from, how
the loss is computed, and what "held-out" means.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from chatsmith.checkpoint import (
    RUN_FILE,
    check_data_unchanged,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from chatsmith.errors import ChatsmithError
from chatsmith.files import write_json_atomic
from chatsmith.models import ModelConfig, model_card
from chatsmith.reporting import Reporter
from chatsmith.runtime import autocast, configure_cuda, rng_state, set_rng_state
from chatsmith.training.config import RunConfig, TrainConfig
from chatsmith.training.metrics import MetricsLog, OverfitWatch, plot_curves
from chatsmith.training.optim import build_optimizers, lr_factor, set_lr
from chatsmith.training.parallel import (
    ParallelPlan,
    load_full_weights,
    load_sharded,
    peak_flops,
    save_sharded_checkpoint,
    shard_optimizer_state,
)
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
    "optimizers": Field(list, optional=True),  # absent from FSDP2 checkpoints (in dcp/)
    "objective": Field(dict),
    "rng": Field(dict),
    "elapsed": Field(float, lo=0),
    "tokens": Field(int, lo=0),
}


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


def _budget_progress(step: int, elapsed: float, run: RunConfig) -> float:
    parts = []
    if run.max_steps:
        parts.append(step / run.max_steps)
    if run.max_minutes:
        parts.append(elapsed / (run.max_minutes * 60))
    return max(parts) if parts else 0.0


class Trainer:
    """One training run: `fit` repeats `step` until the budget is spent, evaluating and
    checkpointing on the way. State that resume restores lives in `step`, `elapsed`,
    `tokens_seen`, the optimizers, the objective and the RNG.

    `plan` says how this process shares the work with others (see training/parallel.py); the
    loop calls its hooks, which do nothing in a single process."""

    def __init__(
        self,
        model: nn.Module,
        cfg: ModelConfig,
        objective: Objective,
        config: TrainConfig,
        run: RunConfig,
        reporter: Reporter,
        plan: ParallelPlan,
    ):
        self.model, self.cfg, self.objective = model, cfg, objective
        self.config, self.run, self.reporter = config, run, reporter
        self.run_dir, self.device, self.plan = Path(run.out), run.device, plan
        self.flops_per_token = model_card(cfg, model)["flops_per_token"]
        self.peak_flops = peak_flops(self.device)
        plan.prepare(model)  # activation checkpointing; FSDP2 shards the parameters in place
        self.optimizers = build_optimizers(
            model,
            config.optimizer,
            config.lr,
            config.weight_decay,
            (config.beta1, config.beta2),
            config.muon_lr,
        )
        self.step, self.elapsed, self.tokens_seen = 0, 0.0, 0
        use_compile = config.compile if config.compile is not None else self.device.type == "cuda"
        self.fwd_model = plan.forward_model(model)  # DDP's wrapper, or the model itself
        if use_compile:
            self.fwd_model = torch.compile(self.fwd_model)
        self.metrics: MetricsLog | None = None
        self.watch = OverfitWatch()
        self.loss_window: list[float] = []
        self.smooth_loss = self.last_loss = math.nan

    def restore(self, data: dict | None = None) -> None:
        """Continue from the run folder's latest checkpoint (exact resume). `data` is the
        fingerprint of the data the stage loaded now: a change since the run started is
        refused unless the run allows it (then a warning)."""
        check_data_unchanged(self.run_dir, data, self.run.allow_data_change, self.reporter.say)
        ckpt = load_checkpoint(self.run_dir)
        check_record(ckpt.state, TRAIN_STATE, f"checkpoint {ckpt.path} training state")
        if ckpt.is_sharded:  # written by FSDP2: any number of processes can read it
            load_sharded(ckpt.path, self.model, self.optimizers)
        else:
            saved = ckpt.state.get("optimizers", [])
            if len(saved) != len(self.optimizers):
                raise ChatsmithError(
                    f"checkpoint {ckpt.path} holds {len(saved)} optimizer "
                    f"states but --optimizer {self.config.optimizer} uses "
                    f"{len(self.optimizers)}: resume with the optimizer the run started with"
                )
            if self.plan.mode == "fsdp":
                load_full_weights(self.model, ckpt.model_weights())
            else:
                load_model_weights(self.model, ckpt)
            for opt, sd in zip(self.optimizers, saved):
                opt.load_state_dict(sd)
            shard_optimizer_state(self.optimizers)
        self.objective.load_state_dict(ckpt.state["objective"])
        set_rng_state(ckpt.state["rng"])
        self.step, self.elapsed = ckpt.step, ckpt.state["elapsed"]
        self.tokens_seen = ckpt.state["tokens"]

    def progress(self) -> float:
        return _budget_progress(self.step, self.elapsed, self.run)

    def checkpoint(self, final: bool = False) -> None:
        """FSDP2: every rank writes its shards (and at the end the whole model too); otherwise
        rank 0 writes the usual checkpoint."""
        state = {
            "objective": self.objective.state_dict(),
            "rng": rng_state(),
            "elapsed": self.elapsed,
            "tokens": self.tokens_seen,
        }
        keep = self.config.keep_last
        if self.plan.mode == "fsdp":
            args = (self.run_dir, self.step, self.model, self.optimizers, self.cfg, state, keep)
            save_sharded_checkpoint(self.plan, *args, final)
            return
        if self.plan.is_main:
            state["optimizers"] = [opt.state_dict() for opt in self.optimizers]
            save_checkpoint(self.run_dir, self.step, self.model, self.cfg, state, keep)
        self.plan.barrier()

    def log(self, record: dict) -> None:
        if self.metrics is not None:  # rank 0 only
            self.metrics.write(record)

    def evaluate(self, final: bool = False) -> dict:
        with autocast(self.device):  # every rank evaluates: FSDP2's forward needs them all
            result = self.objective.evaluate(self.model, final)
        self.log({"step": self.step, **result})
        return result

    def train_step(self) -> None:
        """One optimizer step over `grad_accum` micro-batches, then the log line."""
        config, objective, plan = self.config, self.objective, self.plan
        t0 = time.perf_counter()
        factor = lr_factor(self.step, self.progress(), config.warmup_steps, config.min_lr_ratio)
        set_lr(self.optimizers, factor)
        step_loss, step_tokens, extras = 0.0, 0, {}
        for micro in range(config.grad_accum):
            batch = objective.next_batch(self.model)
            with plan.grad_sync(self.fwd_model, micro == config.grad_accum - 1):
                with autocast(self.device):
                    loss, extras = objective.loss(self.fwd_model, batch)
                if not torch.isfinite(loss):
                    raise ChatsmithError(
                        f"loss became {loss.item()} at step {self.step}; "
                        "lower --lr or check the data"
                    )
                loss = plan.weigh_loss(loss, batch)
                (loss / config.grad_accum).backward()
            step_loss += loss.item() / config.grad_accum
            step_tokens += objective.batch_tokens(batch)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        grad_norm = plan.grad_norm(norm)
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        # every rank takes the mean loss, the summed tokens and the slowest clock, so that the
        # schedule and the budget stop are the same everywhere
        before = self.elapsed
        step_loss, step_tokens, self.elapsed = plan.reduce_step(
            step_loss, step_tokens, self.elapsed + time.perf_counter() - t0
        )
        dt = self.elapsed - before
        self.step += 1
        self.tokens_seen += step_tokens
        self.last_loss = step_loss
        self.loss_window.append(step_loss)
        # a smoothed training loss for the overfitting watch: single steps are too noisy
        s = self.smooth_loss
        self.smooth_loss = step_loss if math.isnan(s) else 0.9 * s + 0.1 * step_loss
        tok_s = step_tokens / dt
        if self.step % config.log_every == 0 or self.step == 1:
            record = {
                "step": self.step,
                "loss": sum(self.loss_window) / len(self.loss_window),
                "lr_factor": factor,
                "grad_norm": grad_norm,
                "tokens_per_s": tok_s,  # summed over ranks
                "tokens": self.tokens_seen,
                "elapsed_s": self.elapsed,
                **extras,
            }
            if self.peak_flops is not None:  # model FLOPs utilisation of all ranks' devices
                record["mfu"] = tok_s * self.flops_per_token / (self.peak_flops * plan.world)
            self.log(record)
            self.loss_window.clear()
        progress = self.progress()
        eta = self.elapsed / progress * (1 - progress) if progress > 0 else math.nan
        status = f"loss {step_loss:.3f} | {tok_s:,.0f} tok/s | eta {eta:,.0f}s"
        if hasattr(objective, "status"):  # the stage's own figures (RL: reward, pass@1)
            status = f"{objective.status(extras)} | {status}"
        self.reporter.advance(self.step, progress, status)

    def evaluate_and_watch(self) -> None:
        """A held-out evaluation in the middle of the run, with the overfitting warning."""
        result = self.evaluate()
        self.reporter.say(
            f"step {self.step}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        )
        if "val_loss" in result:
            warning = self.watch.check(self.smooth_loss, result["val_loss"])
            if warning:
                self.reporter.say(f"warning: {warning}")
                self.log({"step": self.step, "warning": warning})

    def fit(self) -> TrainResult:
        if self.plan.is_main:
            self.metrics = MetricsLog(self.run_dir, resume_step=self.step)
        self.reporter.begin(self.objective.name, self.run.max_steps, self.step)
        self.model.train()
        while self.progress() < 1.0:
            self.train_step()
            if self.step % self.config.eval_every == 0 and self.progress() < 1.0:
                self.evaluate_and_watch()
            if self.step % self.config.save_every == 0:
                self.checkpoint()
        self.reporter.end()
        final = self.evaluate(final=True)
        self.checkpoint(final=True)
        if self.plan.is_main:
            plot_curves(self.run_dir)
        return TrainResult(
            self.run_dir, self.step, self.elapsed, self.tokens_seen, final, self.last_loss
        )


def train(
    model: nn.Module,
    cfg: ModelConfig,
    objective: Objective,
    config: TrainConfig,
    run: RunConfig,
    run_info: dict,
    reporter: Reporter | None = None,
    plan: ParallelPlan | None = None,
) -> TrainResult:
    """Train `model` with `objective` until the step or time budget of `run` is spent.

    The caller seeds the RNG (seed_everything) before building the model and objective, so that
    initialisation is reproducible too. A new run writes run.json (`run_info` plus the model
    and loop settings); a resumed one continues from its latest checkpoint. `plan` (one process
    when None) is the caller's, which built the objective to draw this rank's slice of each
    global batch.
    """
    if not run.max_steps and not run.max_minutes:
        raise ChatsmithError("give a budget: --max-steps and/or --max-minutes")
    Path(run.out).mkdir(parents=True, exist_ok=True)
    configure_cuda()
    model.to(run.device)
    plan = plan or ParallelPlan(
        device=run.device, activation_checkpointing=run.activation_checkpointing
    )
    trainer = Trainer(model, cfg, objective, config, run, reporter or Reporter(), plan)
    if run.resume:
        trainer.restore(run_info.get("data"))
    elif plan.is_main:
        info = {**run_info, "model": cfg.to_dict(), "train": asdict(config)}
        write_json_atomic(Path(run.out) / RUN_FILE, info)
    return trainer.fit()

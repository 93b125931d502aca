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
from chatsmith.runtime import autocast, autocast_dtype, configure_cuda, rng_state, set_rng_state
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
            autocast_dtype(self.device, config.precision) == torch.bfloat16,
        )
        self.step, self.elapsed, self.tokens_seen = 0, 0.0, 0
        self.fwd_model = plan.forward_model(model)  # DDP's wrapper, or the model itself
        if config.use_compile(run):
            self.fwd_model = torch.compile(self.fwd_model)
        self.metrics: MetricsLog | None = None
        self.watch = OverfitWatch()
        # each step's loss stays on the device until a step that reads it (log, evaluation,
        # checkpoint, end): reading it back every step would make the host wait for the device
        self.unread: list[tuple[int, torch.Tensor]] = []
        self.loss_window: list[float] = []
        self.smooth_loss = self.last_loss = math.nan
        self.window_tokens, self.window_start, self.tok_s = 0, 0.0, math.nan

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
        self.window_start = self.elapsed  # the first throughput figure counts from here

    def progress(self) -> float:
        return _budget_progress(self.step, self.elapsed, self.run)

    def checkpoint(self, final: bool = False) -> None:
        """FSDP2: every rank writes its shards (and at the end the whole model too); otherwise
        rank 0 writes the usual checkpoint."""
        self.read_losses()  # never save weights that a non-finite loss has spoilt
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
        self.read_losses()
        # every rank evaluates: FSDP2's forward needs them all
        with autocast(self.device, self.config.precision):
            result = self.objective.evaluate(self.model, final)
        self.log({"step": self.step, **result})
        return result

    def read_losses(self) -> None:
        """Read the steps' losses back from the device (one wait for all of them) and stop the
        run at the first that is not finite, before anything is logged, evaluated or saved."""
        if not self.unread:
            return
        values = torch.stack([loss for _, loss in self.unread]).tolist()
        for (step, _), value in zip(self.unread, values):
            if not math.isfinite(value):
                raise ChatsmithError(
                    f"loss became {value} at step {step}; lower --lr or check the data"
                )
            self.last_loss = value
            self.loss_window.append(value)
            # a smoothed training loss for the overfitting watch: single steps are too noisy
            s = self.smooth_loss
            self.smooth_loss = value if math.isnan(s) else 0.9 * s + 0.1 * value
        self.unread.clear()

    def train_step(self) -> None:
        """One optimizer step over `grad_accum` micro-batches; the log line every `log_every`
        steps. Nothing here waits for the device except on those steps."""
        config, objective, plan = self.config, self.objective, self.plan
        t0 = time.perf_counter()
        factor = lr_factor(self.step, self.progress(), config.warmup_steps, config.min_lr_ratio)
        set_lr(self.optimizers, factor)
        step_loss, step_tokens, extras = torch.zeros((), device=self.device), 0, {}
        for micro in range(config.grad_accum):
            batch = objective.next_batch(self.model)
            with plan.grad_sync(self.fwd_model, micro == config.grad_accum - 1):
                with autocast(self.device, config.precision):
                    loss, extras = objective.loss(self.fwd_model, batch)
                loss = plan.weigh_loss(loss, batch)
                (loss / config.grad_accum).backward()
            step_loss += loss.detach().float() / config.grad_accum
            step_tokens += objective.batch_tokens(batch)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        self.step += 1
        self.unread.append((self.step, plan.mean_loss(step_loss)))
        log_now = self.step % config.log_every == 0 or self.step == 1
        if log_now:  # waits for the device, so that the clock below counts the queued work
            self.read_losses()
        # every rank takes the summed tokens and the slowest clock, so that the schedule and
        # the budget stop are the same everywhere
        step_tokens, self.elapsed = plan.reduce_step(
            step_tokens, self.elapsed + time.perf_counter() - t0
        )
        self.tokens_seen += step_tokens
        self.window_tokens += step_tokens
        if log_now:
            self.log_step(factor, plan.grad_norm(norm), extras)
        progress = self.progress()
        eta = self.elapsed / progress * (1 - progress) if progress > 0 else math.nan
        status = f"loss {self.last_loss:.3f} | {self.tok_s:,.0f} tok/s | eta {eta:,.0f}s"
        if hasattr(objective, "status"):  # the stage's own figures (RL: reward, pass@1)
            status = f"{objective.status(extras)} | {status}"
        self.reporter.advance(self.step, progress, status)

    def log_step(self, factor: float, grad_norm: float, extras: dict) -> None:
        """The log line: mean loss and throughput over the steps since the last one."""
        self.tok_s = self.window_tokens / max(self.elapsed - self.window_start, 1e-9)
        record = {
            "step": self.step,
            "loss": sum(self.loss_window) / len(self.loss_window),
            "lr_factor": factor,
            "grad_norm": grad_norm,
            "tokens_per_s": self.tok_s,  # summed over ranks
            "tokens": self.tokens_seen,
            "elapsed_s": self.elapsed,
            **extras,
        }
        if self.peak_flops is not None:  # model FLOPs utilisation of all ranks' devices
            record["mfu"] = self.tok_s * self.flops_per_token / (self.peak_flops * self.plan.world)
        self.log(record)
        self.loss_window.clear()
        self.window_tokens, self.window_start = 0, self.elapsed

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

"""Reinforcement learning on tasks with checkable rewards: a GRPO-style objective for the loop.

Each optimizer step:

1. takes P prompts (`prompts_per_step`) in a shuffled order of the task's training problems;
2. samples a group of G replies per prompt (`group_size`) from the current policy through the
   shared Engine: all P x G sequences decode together in one KV-cached batch, each with its own
   seeded generator (so a resumed run draws the same samples), and each group shares one
   prefill of its prompt;
3. scores every reply with the task's pure reward r_ij (a failing checker scores 0 and is
   logged). With `skip_flat_groups` (the default), a group whose rewards are all equal is
   dropped (its advantages are all 0: it would only dilute the batch) and another P prompts
   are sampled, up to `sample_rounds` rounds, until P informative groups are in hand; the
   step trains on all the informative groups drawn (dynamic sampling, Yu et al., 2025, DAPO);
4. computes group-relative advantages A_ij = r_ij - mean_j(r_ij), divided by
   (std_j(r_ij) + 1e-4) when `std_normalize` is on (std with the 1/G convention);
5. minimises, over the reply tokens y_ij,t (the stop token included, prompt tokens excluded),

       L = (1/T) * sum_ij sum_t [ -A_ij * log pi(y_ij,t | x_i, y_ij,<t)
                                  + beta * k3_ij,t ]
       k3 = exp(q - log pi) - (q - log pi) - 1,   q = log pi_ref(y_ij,t | ...)

   where pi is the policy the replies were sampled from, softmax(logits / temperature),
   T is the number of reply tokens in the whole batch (token-level normalisation: every
   token weighs the same, long replies are not down-weighted per sequence), pi_ref is the frozen
   starting model and beta is `kl` (the k3 term is left out when beta = 0). k3 is Schulman's
   non-negative, unbiased estimator of KL(pi || pi_ref), as used by GRPO (Shao et al., 2024).

Each batch is sampled by the policy being updated and used for exactly one gradient step, so
the PPO probability ratio is 1 and its clipping never acts; the surrogate above is its value
and gradient at that point. The learning rate rises linearly over `warmup_steps` and is then
constant (no decay), so a run stopped and resumed takes the same steps as one that never
stopped.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from chatsmith.data.batching import EpochOrder, pad_right
from chatsmith.data.tasks import SOLVED, Task, TaskPrompt, get_task, safe_reward
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, Generation
from chatsmith.inference.tasks import evaluate_task, prompt_ids, sample_groups
from chatsmith.models import IGNORE_INDEX, ModelConfig, build_model, format_card, model_card
from chatsmith.reporting import Reporter
from chatsmith.runtime import seed_everything
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.config import RLConfig, RunConfig
from chatsmith.training.loop import TrainResult, train
from chatsmith.training.rl_curves import plot_rl_curves
from chatsmith.training.start import start_model

REFERENCE_FILE = "reference.safetensors"
REWARD_CURVE = "reward_curve.png"
MAX_LOGGED_REWARD_ERRORS = 5


def group_advantages(rewards: torch.Tensor, std_normalize: bool = False) -> torch.Tensor:
    """(P, G) rewards -> advantages relative to each group's mean (optionally / its std)."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if std_normalize:
        adv = adv / (rewards.std(dim=1, unbiased=False, keepdim=True) + 1e-4)
    return adv


def grpo_loss(
    token_nll: torch.Tensor,
    mask: torch.Tensor,
    adv: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective of the module docstring on a padded batch.

    token_nll: (B, S) -log pi of each target token (any value where mask is 0);
    mask: (B, S) 1 on reply tokens; adv: (B,) one advantage per sequence;
    ref_logp: (B, S) log pi_ref of the same tokens. Returns (loss, mean k3 per reply token).
    """
    mask = mask.to(token_nll.dtype)
    n_tokens = mask.sum().clamp(min=1.0)
    loss = (adv[:, None] * token_nll * mask).sum() / n_tokens
    kl = torch.zeros((), device=token_nll.device)
    if ref_logp is not None:
        diff = ref_logp - (-token_nll)
        kl = ((torch.exp(diff) - diff - 1) * mask).sum() / n_tokens
        if kl_coef:
            loss = loss + kl_coef * kl
    return loss, kl.detach()


class GroupRelativeObjective:
    """The RL stage (GRPO-style) as a loop Objective: batches are sampled, scored groups of
    replies, and the loss is `grpo_loss` on them."""

    name = "rl"

    def __init__(
        self,
        task: Task,
        tok: Tokenizer,
        config: RLConfig,
        seed: int,
        device: torch.device,
        reference: nn.Module | None = None,
        reporter: Reporter | None = None,
    ):
        if config.group_size < 2:
            raise ChatsmithError(
                "--group-size 1 leaves no group to compare with: every advantage would be 0 "
                "and nothing would be learnt; use 2 or more (8 is usual)"
            )
        if config.prompts_per_step < 1:
            raise ChatsmithError("--prompts-per-step must be at least 1")
        if config.sample_rounds < 1:
            raise ChatsmithError("--sample-rounds must be at least 1")
        if config.temperature <= 0:
            raise ChatsmithError("--temperature must be above 0: greedy groups are all the same")
        self.task, self.tok, self.config, self.seed, self.device = task, tok, config, seed, device
        self.reference = reference
        self.reporter = reporter or Reporter()
        self.train_prompts = task.prompts("train")
        self.val_prompts = task.prompts("val")
        if not self.train_prompts:
            raise ChatsmithError(f"task {task.name} has no training problems")
        if not self.val_prompts:
            raise ChatsmithError(f"task {task.name} has no held-out problems")
        self.samples_drawn = 0  # sampling steps taken; seeds the generators
        self.position = 0  # prompts drawn so far
        self.order = EpochOrder(len(self.train_prompts), seed)
        self.engine: Engine | None = None
        self.reward_sum = self.reward_count = 0.0
        self.errors_logged = self.reward_errors = 0
        self.last_pass1: float | None = None

    def _next_prompts(self) -> list[TaskPrompt]:
        n = self.config.prompts_per_step
        out = [self.train_prompts[self.order[self.position + j]] for j in range(n)]
        self.position += n
        return out

    def _engine(self, model: nn.Module) -> Engine:
        if self.engine is None or self.engine.model is not model:
            size = self.config.prompts_per_step * self.config.group_size
            self.engine = Engine(model, self.tok.stop_ids, max(1, min(self.config.max_batch, size)))
        return self.engine

    def _log_error(self, prompt: TaskPrompt, reply: str, err: str) -> None:
        if self.errors_logged < MAX_LOGGED_REWARD_ERRORS:
            self.reporter.say(
                f"warning: reward failed, scored 0 ({err}) on prompt {prompt.prompt[:50]!r} "
                f"reply {reply[:50]!r}"
            )
        elif self.errors_logged == MAX_LOGGED_REWARD_ERRORS:
            self.reporter.say(
                "warning: more reward failures; counted as reward_errors in the metrics"
            )
        self.errors_logged += 1

    def _sample(self, model: nn.Module, ids: list[list[int]]) -> list[list[Generation]]:
        config = self.config
        engine = self._engine(model)
        was_training = model.training
        model.eval()
        try:
            groups = sample_groups(
                engine,
                ids,
                config.group_size,
                config.temperature,
                config.max_new_tokens,
                self.seed + 1 + self.samples_drawn,
                config.top_k,
            )
        finally:
            model.train(was_training)
        self.samples_drawn += 1
        return groups

    def _scored_groups(self, model: nn.Module) -> list[tuple[list[int], list, list[float]]]:
        """One round: P fresh prompts, G replies each, scored. (prompt ids, replies, rewards)."""
        prompts = self._next_prompts()
        ids = prompt_ids(self.tok, prompts, model.cfg.max_seq_len)
        out = []
        for p, p_ids, group in zip(prompts, ids, self._sample(model, ids), strict=True):
            row = []
            for g in group:
                reply = self.tok.decode(g.tokens)
                r, err = safe_reward(self.task, p, reply)
                if err:
                    self.reward_errors += 1
                    self._log_error(p, reply, err)
                row.append(r)
            out.append((p_ids, group, row))
        return out

    def next_batch(self, model: nn.Module) -> dict:
        """Sampled groups with their advantages. With `skip_flat_groups`, groups whose replies
        all scored the same (no learning signal) are dropped and more prompts are sampled, up
        to `sample_rounds` rounds, until the batch holds `prompts_per_step` informative groups
        (dynamic sampling, as in DAPO)."""
        config = self.config
        sampled, kept = [], []
        self.reward_errors = 0
        for _ in range(config.sample_rounds if config.skip_flat_groups else 1):
            groups = self._scored_groups(model)
            sampled += groups
            kept += [g for g in groups if not config.skip_flat_groups or len(set(g[2])) > 1]
            if len(kept) >= config.prompts_per_step:
                break
        if not kept:  # nothing informative this time: a zero-advantage step on the last round
            kept = groups
        seqs = []
        for p_ids, group, _ in kept:
            # the stop token was an action too (one of the template's stop ids)
            seqs += [(p_ids, g.tokens + ([g.stop_token] if g.stop_token is not None else []))
                     for g in group]  # fmt: skip
        r_all = torch.tensor([g[2] for g in sampled], dtype=torch.float32)
        r = torch.tensor([g[2] for g in kept], dtype=torch.float32)
        adv = group_advantages(r, config.std_normalize).flatten()
        # inputs: prompt + reply but the last token; targets: the reply only
        x = pad_right([(p + y)[:-1] for p, y in seqs], self.tok.pad_id).to(self.device)
        y = pad_right([[IGNORE_INDEX] * (len(p) - 1) + y for p, y in seqs], IGNORE_INDEX).to(
            self.device
        )
        batch = {"x": x, "y": y, "mask": (y != IGNORE_INDEX), "adv": adv.to(self.device)}
        if self.reference is not None:
            with torch.no_grad():
                ref_nll = self._token_nll(self.reference, x, y)
            batch["ref_logp"] = -ref_nll
        self.reward_sum += float(r_all.sum())
        self.reward_count += r_all.numel()
        lengths = [len(g.tokens) for _, group, _ in sampled for g in group]
        # figures over every sampled reply (the policy's own), not only the kept groups
        batch["figures"] = {
            "reward": float(r_all.mean()),
            "solved": float((r_all >= SOLVED).float().mean()),
            "reward_std": float(r_all.std(dim=1, unbiased=False).mean()),
            "informative": float((r_all.std(dim=1) > 0).float().mean()),
            "sampled_groups": float(len(sampled)),
            "trained_groups": float(len(kept)),
            "reply_tokens": sum(lengths) / len(lengths),
            "reward_errors": float(self.reward_errors),
        }
        return batch

    def _token_nll(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log pi(y | x) per position, pi being the sampling policy softmax(logits / T)."""
        temperature = self.config.temperature
        if temperature == 1.0:
            return model(x, y, reduction="none")[1]
        logits = model(x)[0].float() / temperature
        nll = F.cross_entropy(
            logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
        )
        return nll.view_as(y)

    def loss(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        nll = self._token_nll(model, batch["x"], batch["y"])
        loss, kl = grpo_loss(
            nll, batch["mask"], batch["adv"], batch.get("ref_logp"), self.config.kl
        )
        figures = dict(batch["figures"])
        if "ref_logp" in batch:
            figures["kl"] = float(kl)
        return loss, figures

    def status(self, figures: dict) -> str:
        """The progress bar's RL figures: is it learning?"""
        held = "" if self.last_pass1 is None else f" | held-out pass@1 {self.last_pass1:.1%}"
        return (
            f"reward {figures['reward']:.2f} | informative {figures['informative']:.0%} | "
            f"reply {figures['reply_tokens']:.0f} tok{held}"
        )

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["mask"].sum())

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        limit = None if final else self.config.eval_prompts
        score = evaluate_task(
            model,
            self.tok,
            self.task,
            samples=1,
            temperature=0.0,
            max_new_tokens=self.config.max_new_tokens,
            limit=limit,
            engine=self._engine(model),
            keep_examples=2,
        )
        out = {"pass@1": score.pass1, "val_problems": score.n}
        self.last_pass1 = score.pass1
        if self.reward_count:
            out["mean_reward"] = self.reward_sum / self.reward_count
        self.reward_sum = self.reward_count = 0.0
        for prompt, reply, r in score.examples:
            mark = "right" if r >= SOLVED else "wrong"
            self.reporter.say(f"  sample ({mark}): {prompt!r} -> {reply!r}")
        return out

    def state_dict(self) -> dict:
        return {"samples_drawn": self.samples_drawn, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.samples_drawn = int(state["samples_drawn"])
        # runs saved before `position` kept (epoch, pos in epoch)
        old = int(state.get("epoch", 0)) * len(self.train_prompts) + int(state.get("pos", 0))
        self.position = int(state.get("position", old))


def _reference(model: nn.Module, cfg: ModelConfig, run: RunConfig) -> nn.Module:
    """The frozen starting model for the KL penalty, saved into the run at its start."""
    ref_path = Path(run.out) / REFERENCE_FILE
    if not run.resume:
        weights = {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if not (k == "lm_head.weight" and cfg.tie_embeddings)
        }
        save_file(weights, str(ref_path))
    if not ref_path.is_file():
        raise ChatsmithError(f"{ref_path} is missing: the KL penalty needs the starting model")
    reference = build_model(cfg)
    reference.load_state_dict(load_file(str(ref_path)), strict=False)
    return reference.to(run.device).eval().requires_grad_(False)


def rl(config: RLConfig, run: RunConfig, reporter: Reporter | None = None) -> TrainResult:
    """Improve the model of run `config.run` on `config.task` by GRPO-style RL."""
    reporter = reporter or Reporter()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ChatsmithError("rl trains in one process; start it without torchrun")
    seed_everything(run.seed)
    task = get_task(config.task)
    start = start_model(run, config.run, "trained by RL")
    model, cfg = start.model, start.cfg
    if not run.resume:
        config = replace(config, start_checkpoint=str(start.checkpoint.path))
    reference = _reference(model, cfg, run) if config.kl > 0 else None
    objective = GroupRelativeObjective(
        task, start.tokenizer, config, run.seed, run.device, reference, reporter
    )
    reporter.say(
        f"task {task.name}: {len(objective.train_prompts):,} training problems, "
        f"{len(objective.val_prompts):,} held-out | {config.prompts_per_step} prompts x "
        f"{config.group_size} replies per step"
    )
    reporter.say(format_card(model_card(cfg, model)))
    info = {"stage": "rl", "args": asdict(config), "flags": run.budget()}
    result = train(model, cfg, objective, config, run, info, reporter)
    plot_rl_curves(run.out, REWARD_CURVE)
    return result

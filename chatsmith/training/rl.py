"""Reinforcement learning on tasks with checkable rewards: a GRPO-style objective for the loop.

Each optimizer step:

1. takes P prompts (`prompts_per_step`) in a shuffled order of the task's training problems;
2. samples a group of G replies per prompt (`group_size`) from the current policy through the
   shared Engine: all P x G sequences decode together in one KV-cached batch, each with its own
   seeded generator (so a resumed run draws the same samples);
3. scores every reply with the task's pure reward r_ij (a failing checker scores 0 and is
   logged);
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
and gradient at that point. The learning rate is constant after `warmup_steps` (no decay), so a
run stopped and resumed takes the same steps as one that never stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from chatsmith.checkpoint import (
    load_checkpoint,
    load_model_weights,
    load_run_tokenizer,
    read_run_info,
)
from chatsmith.data.tasks import SOLVED, Task, TaskPrompt, get_task, safe_reward
from chatsmith.errors import ChatsmithError
from chatsmith.evaluation.tasks import evaluate_task, make_engine, prompt_ids, sample_groups
from chatsmith.models import IGNORE_INDEX, build_model, format_card, model_card
from chatsmith.runtime import seed_everything
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.loop import RunFlags, TrainResult, TrainSettings, train
from chatsmith.training.metrics import plot_curves

REFERENCE_FILE = "reference.safetensors"
REWARD_CURVE = "reward_curve.png"
MAX_LOGGED_REWARD_ERRORS = 5

RL_DEFAULTS: dict = {
    "task": "arithmetic",
    "group_size": 8,
    "prompts_per_step": 8,
    "kl": 0.0,
    "lr": 1e-4,
    "warmup_steps": 0,
    "max_new_tokens": 32,
    "temperature": 1.0,
    "top_k": None,
    "std_normalize": False,
    "eval_every": 25,
    "eval_prompts": 100,
    "save_every": 50,
    "max_batch": 64,
}


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


class GroupRelativePolicy:
    """The RL stage as a loop Objective: batches are sampled, scored groups of replies."""

    name = "rl"

    def __init__(
        self,
        task: Task,
        tok: Tokenizer,
        args: dict,
        seed: int,
        device: torch.device,
        reference: nn.Module | None = None,
        say=print,
    ):
        if args["group_size"] < 2:
            raise ChatsmithError(
                "--group-size 1 leaves no group to compare with: every advantage would be 0 "
                "and nothing would be learnt; use 2 or more (8 is usual)"
            )
        if args["prompts_per_step"] < 1:
            raise ChatsmithError("--prompts-per-step must be at least 1")
        if args["temperature"] <= 0:
            raise ChatsmithError("--temperature must be above 0: greedy groups are all the same")
        self.task, self.tok, self.args, self.seed, self.device = task, tok, args, seed, device
        self.reference = reference
        self.say = say
        self.train_prompts = task.prompts("train")
        self.val_prompts = task.prompts("val")
        if not self.train_prompts:
            raise ChatsmithError(f"task {task.name} has no training problems")
        if not self.val_prompts:
            raise ChatsmithError(f"task {task.name} has no held-out problems")
        self.samples_drawn = 0  # sampling steps taken; seeds the generators
        self.epoch, self.pos = 0, 0
        self.order = self._order()
        self.engine = None
        self.reward_sum = self.reward_count = 0.0
        self.errors_logged = 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(len(self.train_prompts), generator=g).tolist()

    def _next_prompts(self) -> list[TaskPrompt]:
        out = []
        for _ in range(self.args["prompts_per_step"]):
            if self.pos >= len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            out.append(self.train_prompts[self.order[self.pos]])
            self.pos += 1
        return out

    def _engine(self, model: nn.Module):
        if self.engine is None or self.engine.model is not model:
            size = self.args["prompts_per_step"] * self.args["group_size"]
            self.engine = make_engine(model, self.tok, max(1, min(self.args["max_batch"], size)))
            _record_stop_tokens(self.engine)
        return self.engine

    def _log_error(self, prompt: TaskPrompt, reply: str, err: str) -> None:
        if self.errors_logged < MAX_LOGGED_REWARD_ERRORS:
            tqdm.write(
                f"warning: reward failed, scored 0 ({err}) on prompt {prompt.prompt[:50]!r} "
                f"reply {reply[:50]!r}",
                file=sys.stderr,
            )
        elif self.errors_logged == MAX_LOGGED_REWARD_ERRORS:
            tqdm.write(
                "warning: more reward failures; counted as reward_errors in the metrics",
                file=sys.stderr,
            )
        self.errors_logged += 1

    def next_batch(self, model: nn.Module) -> dict:
        prompts = self._next_prompts()
        ids = prompt_ids(self.tok, prompts, model.cfg.max_seq_len, self.args["max_new_tokens"])
        engine = self._engine(model)
        was_training = model.training
        model.eval()
        try:
            groups = sample_groups(
                engine,
                ids,
                self.args["group_size"],
                self.args["temperature"],
                self.args["max_new_tokens"],
                self.seed + 1 + self.samples_drawn,
                self.args["top_k"],
            )
        finally:
            model.train(was_training)
        self.samples_drawn += 1
        stop = self.tok.chat.stop_ids[0]
        seqs, rewards, errors = [], [], 0
        for p, p_ids, group in zip(prompts, ids, groups, strict=True):
            row = []
            for g in group:
                reply = self.tok.decode(g.tokens)
                r, err = safe_reward(self.task, p, reply)
                if err:
                    errors += 1
                    self._log_error(p, reply, err)
                row.append(r)
                # the stop token was an action too; the engine ends on <|end|> or <|bos|>
                tail = [getattr(g, "stop_token", stop)] if g.finish_reason == "stop" else []
                seqs.append((p_ids, g.tokens + tail))
            rewards.append(row)
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(r, self.args["std_normalize"]).flatten()
        length = max(len(p) + len(y) for p, y in seqs) - 1
        x = torch.full((len(seqs), length), self.tok.pad_id, dtype=torch.long)
        y = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
        for b, (p_ids, reply) in enumerate(seqs):
            full = p_ids + reply
            x[b, : len(full) - 1] = torch.tensor(full[:-1])
            y[b, len(p_ids) - 1 : len(full) - 1] = torch.tensor(reply, dtype=torch.long)
        x, y = x.to(self.device), y.to(self.device)
        batch = {"x": x, "y": y, "mask": (y != IGNORE_INDEX), "adv": adv.to(self.device)}
        if self.reference is not None:
            with torch.no_grad():
                ref_nll = self._token_nll(self.reference, x, y)
            batch["ref_logp"] = -ref_nll
        self.reward_sum += float(r.sum())
        self.reward_count += r.numel()
        batch["figures"] = {
            "reward": float(r.mean()),
            "solved": float((r >= SOLVED).float().mean()),
            "reward_std": float(r.std(dim=1, unbiased=False).mean()),
            "flat_groups": float((r.std(dim=1) == 0).float().mean()),  # no learning signal
            "reply_tokens": float(batch["mask"].sum()) / len(seqs),
            "reward_errors": float(errors),
        }
        return batch

    def _token_nll(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log pi(y | x) per position, pi being the sampling policy softmax(logits / T)."""
        temperature = self.args["temperature"]
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
            nll, batch["mask"], batch["adv"], batch.get("ref_logp"), self.args["kl"]
        )
        figures = dict(batch["figures"])
        if "ref_logp" in batch:
            figures["kl"] = float(kl)
        return loss, figures

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["mask"].sum())

    def evaluate(self, model: nn.Module, final: bool) -> dict:
        limit = None if final else self.args["eval_prompts"]
        score = evaluate_task(
            model,
            self.tok,
            self.task,
            samples=1,
            temperature=0.0,
            max_new_tokens=self.args["max_new_tokens"],
            limit=limit,
            engine=self._engine(model),
            keep_examples=2,
        )
        out = {"pass@1": score.pass1, "val_problems": score.n}
        if self.reward_count:
            out["mean_reward"] = self.reward_sum / self.reward_count
        self.reward_sum = self.reward_count = 0.0
        for prompt, reply, r in score.examples:
            mark = "right" if r >= SOLVED else "wrong"
            tqdm.write(f"  sample ({mark}): {prompt!r} -> {reply!r}", file=sys.stderr)
        return out

    def state_dict(self) -> dict:
        return {"samples_drawn": self.samples_drawn, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.samples_drawn, self.pos = int(state["samples_drawn"]), int(state["pos"])
        self.epoch = int(state["epoch"])
        self.order = self._order()


def _record_stop_tokens(engine) -> None:
    """Make `engine` remember which stop token ended each sequence (end or bos).

    The policy gradient must train the token that was actually sampled; the shared Engine
    drops it, so its `_accept` is wrapped on this one instance.
    """
    inner = engine._accept

    def accept(seq, token):
        if token in engine.stop_ids:
            seq.stop_token = token
        return inner(seq, token)

    engine._accept = accept


def rl(
    args: dict, flags: RunFlags, flag_info: dict | None = None, quiet: bool = False, say=print
) -> TrainResult:
    """Improve the model of run `args["run"]` on `args["task"]` by GRPO-style RL."""
    seed_everything(flags.seed)
    out = Path(flags.out)
    task = get_task(args["task"])
    if flags.resume:
        ckpt = load_checkpoint(out, with_state=False)
        tok = load_run_tokenizer(out, ckpt.model_config)
        cfg = ckpt.model_config
        model = build_model(cfg)  # the loop loads the resumed weights
    else:
        if not args.get("run"):
            raise ChatsmithError("give the run to start from: chatsmith rl RUN --task NAME")
        base = Path(args["run"])
        read_run_info(base)
        ckpt = load_checkpoint(base, with_state=False)
        cfg = ckpt.model_config
        if cfg.arch != "decoder":
            raise ChatsmithError(f"RL needs a decoder model; {base} holds a {cfg.arch}")
        tok = load_run_tokenizer(base, cfg)
        model = build_model(cfg)
        load_model_weights(model, ckpt)
        out.mkdir(parents=True, exist_ok=True)
        tok.save_beside(out)  # with an imported run's chat format
        args = {**args, "start_checkpoint": str(ckpt.path)}
    reference = None
    if args["kl"] > 0:
        ref_path = out / REFERENCE_FILE
        if not flags.resume:
            save_file(
                {
                    k: v.detach().cpu().contiguous()
                    for k, v in model.state_dict().items()
                    if not (k == "lm_head.weight" and cfg.tie_embeddings)
                },
                str(ref_path),
            )
        if not ref_path.is_file():
            raise ChatsmithError(f"{ref_path} is missing: the KL penalty needs the starting model")
        reference = build_model(cfg)
        reference.load_state_dict(load_file(str(ref_path)), strict=False)
        reference.to(flags.device).eval().requires_grad_(False)
    objective = GroupRelativePolicy(task, tok, args, flags.seed, flags.device, reference, say)
    settings = TrainSettings(
        batch_size=args["prompts_per_step"] * args["group_size"],
        lr=args["lr"],
        warmup_steps=args["warmup_steps"],
        min_lr_ratio=1.0,
        weight_decay=0.0,
        eval_every=args["eval_every"],
        save_every=args["save_every"],
        log_every=1,
        compile=False,  # reply lengths change every step; recompiling would cost more than it saves
    )
    say(
        f"task {task.name}: {len(objective.train_prompts):,} training problems, "
        f"{len(objective.val_prompts):,} held-out | {args['prompts_per_step']} prompts x "
        f"{args['group_size']} replies per step"
    )
    say(format_card(model_card(cfg, model)))
    info = {"stage": "rl", "args": args, "flags": flag_info or {}}
    result = train(model, cfg, objective, settings, flags, info, quiet=quiet)
    plot_curves(
        out,
        keys=("reward", "pass@1"),
        filename=REWARD_CURVE,
        ylabel="mean reward (train) / pass@1 (held-out)",
    )
    return result

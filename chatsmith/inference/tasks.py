"""Replies to a task's problems, sampled through the shared Engine, and their pass@1 / pass@k.

RL samples its training groups with `sample_groups` and checks held-out pass@1 with
`evaluate_task`; `chatsmith eval --task` reports the same figures.

pass@k uses the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code"): with n samples of which c are correct, pass@k = 1 - C(n-c, k) / C(n, k),
averaged over problems. A reply is correct when the task's reward is at least 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from chatsmith.chat_template import render_prompt
from chatsmith.data.tasks import SOLVED, Task, TaskPrompt, safe_reward
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, Generation, SamplingParams
from chatsmith.tokenizer import Tokenizer

DEFAULT_MAX_NEW_TOKENS = 48


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # product form of 1 - C(n-c, k) / C(n, k); avoids huge binomials
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass
class TaskScore:
    pass1: float
    passk: float
    k: int
    n: int  # problems scored
    examples: list[tuple[str, str, float]] = field(default_factory=list)  # prompt, reply, reward

    def to_dict(self) -> dict:
        return {"pass@1": self.pass1, "pass@k": self.passk, "k": self.k, "n": self.n}


def prompt_ids(tok: Tokenizer, prompts: list[TaskPrompt], context: int) -> list[list[int]]:
    """Rendered prompts; a prompt that leaves no room for a reply is an input error."""
    out = []
    for p in prompts:
        ids = render_prompt(tok, p.messages())
        if len(ids) + 1 >= context:
            raise ChatsmithError(
                f"a prompt of {len(ids)} tokens does not fit the model's {context}-token context "
                f"with room for a reply: {p.prompt[:60]!r}"
            )
        out.append(ids)
    return out


def sample_groups(
    engine: Engine,
    ids: list[list[int]],
    samples: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    top_k: int | None = None,
) -> list[list[Generation]]:
    """`samples` replies for each prompt, all decoded together in the engine's batch.

    Every sequence gets its own seeded generator, so the replies do not depend on how the
    batch is scheduled and a resumed run draws exactly the same samples. A group that fits the
    engine's free slots shares one prefill of its prompt (`Engine.add_group`).
    """
    params = [
        [
            SamplingParams(
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                seed=(seed * 1_000_003 + i * 1009 + j) % (2**62),
            )
            for j in range(samples)
        ]
        for i in range(len(ids))
    ]
    if samples > engine.max_batch:  # a group never fits at once: one reply at a time
        flat = engine.generate_many(
            [p for p in ids for _ in range(samples)], [q for group in params for q in group]
        )
        return [flat[i * samples : (i + 1) * samples] for i in range(len(ids))]
    groups: list[list[Generation]] = []
    while len(groups) < len(ids) or engine.live:
        while len(groups) < len(ids) and len(engine.free) >= samples:
            i = len(groups)
            groups.append(engine.add_group(ids[i], params[i]))
        engine.step()
    return groups


def evaluate_task(
    model: nn.Module,
    tok: Tokenizer,
    task: Task,
    samples: int = 1,
    temperature: float | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    split: str = "val",
    limit: int | None = None,
    seed: int = 0,
    max_batch: int = 64,
    engine: Engine | None = None,
    keep_examples: int = 3,
) -> TaskScore:
    """pass@1 and pass@`samples` over the task's `split` problems (the first `limit` of them).

    With one sample the reply is greedy unless a temperature is given; with several, the
    default temperature is 1.0, so that the samples differ.
    """
    if samples < 1:
        raise ChatsmithError(f"--samples must be at least 1, got {samples}")
    if temperature is None:
        temperature = 0.0 if samples == 1 else 1.0
    if samples > 1 and temperature == 0:
        raise ChatsmithError("several samples at temperature 0 are all the same reply")
    prompts = task.prompts(split)[:limit]
    if not prompts:
        raise ChatsmithError(f"task {task.name} has no {split} problems")
    was_training = model.training
    if engine is None:
        engine = Engine(model, tok.stop_ids, max(1, min(max_batch, len(prompts) * samples)))
    model.eval()
    try:
        ids = prompt_ids(tok, prompts, model.cfg.max_seq_len)
        groups = sample_groups(engine, ids, samples, temperature, max_new_tokens, seed)
    finally:
        model.train(was_training)
    pass1 = passk = 0.0
    examples = []
    for p, group in zip(prompts, groups, strict=True):
        correct = 0
        for g in group:
            reply = tok.decode(g.tokens)
            r, _ = safe_reward(task, p, reply)
            correct += r >= SOLVED
            if len(examples) < keep_examples:
                examples.append((p.prompt, reply, r))
        pass1 += pass_at_k(samples, correct, 1)
        passk += pass_at_k(samples, correct, samples)
    n = len(prompts)
    return TaskScore(pass1 / n, passk / n, samples, n, examples)

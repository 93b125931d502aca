"""An encoder-decoder run on a sequence-to-sequence task's held-out pairs: teacher-forced loss
per target token, and the share of greedy replies (through the shared engine) that are right."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatsmith.data.seq2seq import get_seq2seq_task, pair_ids
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import SamplingParams
from chatsmith.inference.loading import LoadedRun
from chatsmith.inference.seq2seq import HELD_OUT_PAIRS, score_pairs


@dataclass
class Seq2SeqScore:
    task: str
    loss: float  # nats per target token, over up to HELD_OUT_PAIRS held-out pairs
    tokens: int
    accuracy: float  # share of the first `n` held-out sources answered right
    n: int
    examples: list[tuple[str, str, bool]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "loss": self.loss,
            "tokens": self.tokens,
            "accuracy": self.accuracy,
            "n": self.n,
        }


def evaluate_seq2seq(
    run: LoadedRun,
    task_name: str,
    limit: int = 200,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    keep_examples: int = 3,
) -> Seq2SeqScore:
    if run.cfg.arch != "encoder_decoder":
        raise ChatsmithError(f"{run.path} is a {run.cfg.arch} run, not an encoder-decoder")
    task = get_seq2seq_task(task_name)
    pairs = task.pairs("val")[:HELD_OUT_PAIRS]
    if not pairs:
        raise ChatsmithError(f"task {task.name} has no held-out pairs")
    tok = run.tokenizer
    ids = pair_ids(tok, pairs, run.cfg.max_seq_len)
    loss, tokens = score_pairs(run.model, ids, tok.bos_id, tok.pad_id, None, batch_size)
    shown = pairs[:limit]
    engine = run.engine(max_batch=max(1, min(32, len(shown))))
    greedy = SamplingParams(max_tokens=max_new_tokens, temperature=0)
    gens = engine.generate_many([s for s, _ in ids[: len(shown)]], greedy)
    right, examples = 0, []
    for pair, gen in zip(shown, gens):
        reply = tok.decode(gen.tokens).strip()
        ok = task.correct(pair, reply)
        right += ok
        if len(examples) < keep_examples:
            examples.append((pair.source, reply, ok))
    return Seq2SeqScore(task.name, loss, tokens, right / len(shown), len(shown), examples)

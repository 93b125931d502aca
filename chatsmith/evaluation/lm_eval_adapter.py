"""EleutherAI's lm-evaluation-harness on a chatsmith run (the `eval` extra).

Importing this module registers the model name `chatsmith` with lm-eval. lm-eval's own
`lm_eval` command only knows the models it ships with (it has no plugin discovery), so this
module is also the command to use: it registers, then hands its arguments to lm-eval's CLI.

    python -m chatsmith.evaluation.lm_eval_adapter --model chatsmith \\
        --model_args run=runs/my-run --tasks hellaswag,arc_easy --batch_size 16 --device cpu

From Python, `lm_eval.simple_evaluate(model="chatsmith", model_args="run=...")` works once
this module is imported.

Scoring is the run's own: BOS, then the text's tokens, as in pretraining and `chatsmith eval`.
Log-likelihoods are batched forward passes; generation goes through the shared Engine, all
requests decoding together in its batch, each stopping at the first `until` string.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own names first; a non-empty registry skips them)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import model_registry, register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:  # pragma: no cover - exercised only without the extra
    from chatsmith.errors import ChatsmithError

    raise ChatsmithError("lm-eval is not installed: pip install 'chatsmith[eval]'") from e

from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.likelihood import continuation_logprobs
from chatsmith.inference.loading import load_run

DEFAULT_BATCH = 16


def _batch_size(value) -> int:
    """lm-eval passes --batch_size through as given: an int, a digit string, or 'auto'."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH
    try:
        size = int(value)
    except ValueError:
        raise ChatsmithError(f"batch_size must be a number or auto, got {value!r}") from None
    if size < 1:
        raise ChatsmithError(f"batch_size must be at least 1, got {size}")
    return size


class ChatsmithLM(LM):
    def __init__(
        self,
        run: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        max_gen_toks: int = 256,
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ChatsmithError(
                f"unknown --model_args {sorted(unknown)}; chatsmith takes run and max_gen_toks"
            )
        if run is None:
            raise ChatsmithError("give the run folder: --model_args run=RUN")
        if not Path(run).is_dir():
            raise ChatsmithError(f"run folder {run} does not exist")
        self.loaded = load_run(run, device or "auto")
        self.tok = self.loaded.tokenizer
        self.model = self.loaded.model
        self.batch = min(_batch_size(batch_size), int(max_batch_size or 10**9))
        self.max_gen_toks = int(max_gen_toks)
        self._device = next(self.model.parameters()).device

    @property
    def context(self) -> int:
        return self.loaded.cfg.max_seq_len

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # a space ending the context belongs to the next word: BPE merges it into that token
        n = len(context) - len(context.rstrip(" "))
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        cont = whole[len(ctx) :] if whole[: len(ctx)] == ctx else self.tok.encode(continuation)
        return [self.tok.bos_id, *ctx], cont

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*r.args[:2]) for r in requests]
        scored = [(c, t) for c, t in pairs if t]
        results = iter(continuation_logprobs(self.model, scored, self.batch))
        # an empty continuation has probability 1 and is trivially greedy
        return [next(results) if t else (0.0, True) for _, t in pairs]

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Whole-document log-likelihood in windows of the model's context; each window's
        tokens are predicted once, with as much preceding text as fits."""
        windows, owners = [], []
        for k, r in enumerate(requests):
            for ctx, pred in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    self.tok.encode(r.args[0]), self.tok.bos_id, self.context, 1
                ),
            ):
                windows.append((ctx, pred))
                owners.append(k)
        totals = [0.0] * len(requests)
        for k, (lp, _) in zip(owners, continuation_logprobs(self.model, windows, self.batch)):
            totals[k] += lp
        return totals

    def generate_until(self, requests) -> list[str]:
        jobs = []
        for i, r in enumerate(requests):
            context, kw = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kw.get("max_gen_toks", self.max_gen_toks))
            max_new = max(1, min(max_new, self.context - 1))
            sample = bool(kw.get("do_sample", False))
            params = SamplingParams(
                max_tokens=max_new,
                temperature=float(kw.get("temperature", 1.0)) if sample else 0.0,
                top_p=float(kw.get("top_p", 1.0)) if sample else 1.0,
                seed=1234 + i,  # sampled replies reproducible, and different per request
            )
            ids = [self.tok.bos_id, *self.tok.encode(context)]
            ids = ids[-(self.context - max_new) :]  # keep the end of a long prompt
            jobs.append((ids, params, until))
        return generate_with_stops(self.loaded.engine(self.batch), self.tok, jobs)


# `python -m` runs this file as __main__; should it then be imported by name too, the class
# of the first run stays the registered one
if "chatsmith" not in model_registry:
    register_model("chatsmith")(ChatsmithLM)


def generate_with_stops(
    engine: Engine, tok, jobs: list[tuple[list[int], SamplingParams, list[str]]]
) -> list[str]:
    """Decode every job in the engine's batch; a sequence leaves as soon as its text holds one
    of its stop strings, and its reply is cut before that string."""
    texts: list[str] = [""] * len(jobs)
    pending = list(range(len(jobs)))[::-1]
    running: dict = {}  # Generation -> job index
    while pending or running:
        while pending and engine.has_free_slot():
            i = pending.pop()
            ids, params, _ = jobs[i]
            running[engine.add(ids, params)] = i
        for seq, _token in engine.step():
            i = running.get(seq)
            if i is None:
                continue
            text = tok.decode(seq.tokens)
            cut = min((text.find(s) for s in jobs[i][2] if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
                engine.release(seq)
            texts[i] = text
            if seq.finished:
                del running[seq]
    return texts


def _flag_values(argv: list[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def check_task_paths(argv: list[str]) -> None:
    """Task files and folders must exist: lm-eval would only say "Tasks not found"."""
    for folder in _flag_values(argv, "--include_path"):
        if not Path(folder).is_dir():
            raise ChatsmithError(f"--include_path {folder}: no such folder of task files")
    for tasks in _flag_values(argv, "--tasks"):
        for name in tasks.split(","):
            if name.endswith((".yaml", ".yml")) and not Path(name).is_file():
                raise ChatsmithError(f"task file {name} does not exist")


def main(argv: list[str] | None = None) -> None:
    """`lm_eval`'s command line, with the chatsmith model registered."""
    from lm_eval.__main__ import cli_evaluate

    argv = sys.argv[1:] if argv is None else argv
    try:
        check_task_paths(argv)
        sys.argv = [sys.argv[0], *argv]
        cli_evaluate()
    except ChatsmithError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except ValueError as e:
        if not str(e).startswith("Tasks not found"):
            raise
        print(
            f"error: {e} (a task name lm-eval knows, a .yaml file, or one in --include_path)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The `chatsmith` command line. Heavy imports happen inside commands so `--help` is instant."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from chatsmith.errors import ChatsmithError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Build your own ChatGPT-style model: pretrain, fine-tune, chat, serve, evaluate.",
)

RunArg = typer.Argument(..., help="A run folder written by a training command.")
OutOpt = typer.Option(None, "--out", help="Run folder to write (default: a new one under runs/).")
ResumeOpt = typer.Option(None, "--resume", help="Continue the interrupted run in this folder.")
MinutesOpt = typer.Option(None, "--max-minutes", help="Training-time budget in minutes.")
StepsOpt = typer.Option(None, "--max-steps", help="Budget in optimizer steps.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
SeedOpt = typer.Option(None, "--seed", help="Random seed (default 1337).")
JsonOpt = typer.Option(False, "--json", help="Print the figures as one JSON object.")


def say(msg: str) -> None:
    """Progress notes go to stderr so that stdout stays clean for figures and generated text."""
    print(msg, file=sys.stderr, flush=True)


def run_flags(stage: str, out: Optional[Path], resume: Optional[Path], max_minutes: Optional[float],
              max_steps: Optional[int], device: str, seed: Optional[int], defaults: dict):
    """Resolve the flags every training stage shares; on --resume the run's own settings win
    unless a flag is given again."""
    from chatsmith.checkpoint import read_run_info
    from chatsmith.runtime import resolve_device
    from chatsmith.training.loop import RunFlags

    saved: dict = {}
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise ChatsmithError("--out and --resume name different folders; give one")
        saved = read_run_info(resume).get("flags", {})
        out = resume
    elif out is None:
        out = Path("runs") / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    elif (Path(out) / "latest").exists():
        raise ChatsmithError(f"{out} already holds a run; use --resume {out} or another --out")
    budget = {"max_minutes": max_minutes, "max_steps": max_steps}
    if max_minutes is None and max_steps is None:
        budget = {k: saved.get(k, defaults.get(k)) for k in budget}
    seed = seed if seed is not None else saved.get("seed", 1337)
    flags = RunFlags(out=Path(out), resume=resume is not None, device=resolve_device(device),
                     seed=seed, **budget)
    return flags, {"seed": seed, **budget}


def merge_args(flags, given: dict, defaults: dict) -> dict:
    """Stage settings: defaults, then (on resume) the run's saved settings, then given flags."""
    from chatsmith.checkpoint import read_run_info

    base = dict(defaults)
    if flags.resume:
        base.update(read_run_info(flags.out).get("args", {}))
    base.update({k: v for k, v in given.items() if v is not None})
    return base


def report(result, as_json: bool, extra: Optional[dict] = None) -> None:
    figures = {**result.to_dict(), **(extra or {})}
    if as_json:
        print(json.dumps(figures))
        return
    print(f"run folder: {result.run_dir}")
    print(f"steps: {result.step}  training time: {result.train_seconds:.1f}s  "
          f"tokens: {result.tokens:,}")
    for k, v in result.final_eval.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


@app.command()
def pretrain(
    data: Optional[str] = typer.Option(
        None, help="Text file, folder, .jsonl (text field), .parquet or hf:NAME[:split]. "
        "Default: the built-in chitchat corpus."),
    val_data: Optional[str] = typer.Option(
        None, help="Held-out data (default: the built-in split, or the last 5% of --data)."),
    vocab_size: Optional[int] = typer.Option(None, help="BPE vocabulary size (default 4096)."),
    preset: Optional[str] = typer.Option(
        None, help="Model size: tiny, mini (default), small, base, gpt2-small, gpt2-medium."),
    depth: Optional[int] = typer.Option(
        None, help="One dial for size: layers = depth, width = 64 x depth, 64-wide heads."),
    seq_len: Optional[int] = typer.Option(None, help="Context length in tokens (default 256)."),
    n_kv_head: Optional[int] = typer.Option(None, help="Key/value heads (fewer = grouped-query)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per micro-batch."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, help="adamw (default) or muon."),
    eval_every: Optional[int] = typer.Option(None, help="Steps between held-out evaluations."),
    save_every: Optional[int] = typer.Option(None, help="Steps between checkpoints."),
    compile: Optional[bool] = typer.Option(
        None, "--compile/--no-compile", help="torch.compile (default: on CUDA only)."),
    out: Optional[Path] = OutOpt,
    resume: Optional[Path] = ResumeOpt,
    max_minutes: Optional[float] = MinutesOpt,
    max_steps: Optional[int] = StepsOpt,
    device: str = DeviceOpt,
    seed: Optional[int] = SeedOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a BPE tokenizer and a GPT from scratch on raw text."""
    from chatsmith.training.pretrain import PRETRAIN_DEFAULTS, pretrain as run_pretrain

    flags, flag_info = run_flags("pretrain", out, resume, max_minutes, max_steps, device, seed,
                                 {"max_minutes": 5.0})
    given = dict(data=data, val_data=val_data, vocab_size=vocab_size, preset=preset, depth=depth,
                 seq_len=seq_len, n_kv_head=n_kv_head, batch_size=batch_size,
                 grad_accum=grad_accum, lr=lr, optimizer=optimizer, eval_every=eval_every,
                 save_every=save_every, compile=compile)
    args = merge_args(flags, given, PRETRAIN_DEFAULTS)
    say(f"run folder: {flags.out}  device: {flags.device}")
    result = run_pretrain(args, flags, flag_info, say=say)
    report(result, as_json)
    if not as_json:
        print(f"next: chatsmith generate {result.run_dir} --prompt \"Hi, how are you?\"")


def _load(run: Path, device: str):
    from chatsmith.inference.loading import load_run

    return load_run(run, device)


@app.command()
def generate(
    run: Path = RunArg,
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue."),
    max_tokens: int = typer.Option(200, help="Most new tokens to generate."),
    temperature: float = typer.Option(0.8, help="0 = greedy; higher = more random."),
    top_k: Optional[int] = typer.Option(50, help="Sample among the k likeliest tokens."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass."),
    seed: Optional[int] = typer.Option(None, help="Seed for a reproducible sample."),
    device: str = DeviceOpt,
) -> None:
    """Stream a continuation of --prompt from a model.

    A prompt longer than the context is cut from the left (the most recent text is kept) so
    that the reply still fits; a note says so.
    """
    from chatsmith.inference.engine import SamplingParams
    from chatsmith.inference.streaming import TextStream

    loaded = _load(run, device)
    tok = loaded.tokenizer
    ids = [tok.bos_id, *tok.encode(prompt)]
    keep = loaded.cfg.max_seq_len - min(max_tokens, loaded.cfg.max_seq_len // 2)
    if len(ids) > keep:
        say(f"note: the prompt has {len(ids)} tokens; keeping its last {keep} so the reply fits "
            f"the {loaded.cfg.max_seq_len}-token context")
        ids = ids[-keep:]
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, seed=seed)
    stream = TextStream(tok)
    sys.stdout.write(prompt)
    for token in loaded.engine().generate(ids, params):
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")


@app.command("eval")
def evaluate(
    run: Path = RunArg,
    data: str = typer.Option("builtin:chitchat", help="Text to score (default: built-in held-out split)."),
    batch_size: int = typer.Option(8, help="Windows scored at once."),
    max_tokens: Optional[int] = typer.Option(None, help="Score at most this many tokens."),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Loss and bits per byte of a model on any text."""
    from chatsmith.evaluation.perplexity import evaluate_text

    loaded = _load(run, device)
    score = evaluate_text(loaded, data, batch_size, max_tokens)
    if as_json:
        print(json.dumps(score.to_dict()))
    else:
        print(f"loss: {score.loss:.4f} nats/token  bpb: {score.bpb:.4f}  "
              f"tokens: {score.tokens:,}  bytes: {score.bytes:,}")


def main() -> None:
    try:
        app()
    except ChatsmithError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

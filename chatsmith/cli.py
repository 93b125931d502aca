"""The `chatsmith` command line. Heavy imports happen inside commands so `--help` is instant."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from chatsmith.cli_stages import stage_command
from chatsmith.data.chitchat import BUILTIN_NAME
from chatsmith.errors import ChatsmithError
from chatsmith.reporting import Reporter
from chatsmith.training.config import (
    DEFAULT_SEED,
    PretrainConfig,
    RLConfig,
    SFTConfig,
    new_run_dir,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Build your own ChatGPT-style model: pretrain, fine-tune, chat, serve, evaluate.",
)

RunArg = typer.Argument(..., help="A run folder written by a training command.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
JsonOpt = typer.Option(False, "--json", help="Print the figures as one JSON object.")
COMPILE_HELP = (
    "Compile the decode step with torch.compile: more tokens/s for a small model (~3x at "
    "batch 1 on a CPU), after a one-off compile of tens of seconds."
)


def say(msg: str) -> None:
    """Notes go to stderr so that stdout stays clean for figures and generated text."""
    print(msg, file=sys.stderr, flush=True)


@stage_command(app, PretrainConfig, scale=True)
def pretrain(config, run, reporter):
    """Train a BPE tokenizer and a model from scratch (a GPT on raw text by default), or a
    GPT on token shards."""
    from chatsmith.training.pretrain import pretrain as run_pretrain

    result = run_pretrain(config, run, reporter)
    return result, None, next_step(config.arch, result.run_dir)


def next_step(arch: str, run: Path) -> str:
    if arch == "encoder":
        return f'next: chatsmith embed {run} --text "Hi, how are you?"'
    return f'next: chatsmith generate {run} --prompt "Hi, how are you?"'


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
    engine = loaded.engine()
    tok = loaded.tokenizer
    ids = [*tok.doc_start, *tok.encode(prompt)]
    keep = loaded.cfg.max_seq_len - min(max_tokens, loaded.cfg.max_seq_len // 2)
    if engine.seq2seq:  # an encoder-decoder answers its source: the prompt is not continued
        if not prompt.strip():
            raise ChatsmithError(f"{run} is an encoder-decoder: give the source with --prompt")
        ids, keep = tok.encode(prompt), loaded.cfg.max_seq_len
    if len(ids) > keep:
        say(
            f"note: the prompt has {len(ids)} tokens; keeping its last {keep} so the reply fits "
            f"the {loaded.cfg.max_seq_len}-token context"
        )
        ids = ids[-keep:]
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    stream = TextStream(tok)
    sys.stdout.write("" if engine.seq2seq else prompt)
    for token in engine.generate(ids, params):
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")


@app.command()
def embed(
    run: Path = RunArg,
    text: Optional[list[str]] = typer.Option(
        None, "--text", "-t", help="A text to embed (repeat for several)."
    ),
    file: Optional[Path] = typer.Option(None, "--file", help="Embed every non-blank line."),
    batch_size: int = typer.Option(32, help="Texts embedded at once."),
    device: str = DeviceOpt,
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object with every text and its vector."
    ),
) -> None:
    """Sentence embeddings from an encoder run: mean of the token states, unit length.

    Without --json, one line per text: its vector's numbers separated by spaces."""
    from chatsmith.inference.embeddings import embed_texts, read_inputs

    texts = read_inputs(text, None if file is None else str(file))
    loaded = _load(run, device)
    vectors, tokens = embed_texts(loaded, texts, batch_size)
    if as_json:
        rows = [{"text": t, "embedding": v} for t, v in zip(texts, vectors.tolist())]
        print(
            json.dumps(
                {
                    "model": loaded.name,
                    "dimensions": vectors.size(1),
                    "tokens": tokens,
                    "data": rows,
                }
            )
        )
        return
    for v in vectors.tolist():
        print(" ".join(f"{x:.6f}" for x in v))


@app.command("eval")
def evaluate(
    run: Path = RunArg,
    data: Optional[str] = typer.Option(
        None,
        help="Text to score (default: the built-in corpus's held-out split); with --code, source "
        "code (default: the held-out files of the run's own code data, or builtin:python-stdlib).",
    ),
    code: bool = typer.Option(
        False,
        "--code",
        help="Code figures: bpb, infill exact match and edit similarity, next-line exact match.",
    ),
    include: Optional[str] = typer.Option(
        None, help='With --code and a folder: file patterns, e.g. "*.py,*.rs".'
    ),
    batch_size: int = typer.Option(8, help="Windows scored at once."),
    max_tokens: Optional[int] = typer.Option(None, help="Score at most this many tokens."),
    task: Optional[str] = typer.Option(
        None, help="Score pass@1/pass@k on a task's held-out problems instead (e.g. arithmetic)."
    ),
    samples: int = typer.Option(
        1, help="With --task: replies per problem (k of pass@k); with --code: spans of each kind."
    ),
    temperature: Optional[float] = typer.Option(
        None, help="With --task: sampling temperature (default: greedy for 1 sample, else 1.0)."
    ),
    max_new_tokens: int = typer.Option(48, help="With --task: longest reply."),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Loss and bits per byte of a model on any text, pass@k on a task with --task, or code
    figures with --code.

    An encoder run is scored on masked tokens of the text; an encoder-decoder run on its
    task's (or --task's) held-out pairs."""
    from chatsmith.evaluation.perplexity import evaluate_text

    if code:
        _eval_code(run, data, include, samples, max_tokens, device, as_json)
        return
    loaded = _load(run, device)
    if loaded.cfg.arch != "decoder":
        data = data or BUILTIN_NAME
        _evaluate_family(loaded, data, batch_size, max_tokens, task, max_new_tokens, as_json)
        return
    if task is not None:
        from chatsmith.data.tasks import get_task
        from chatsmith.inference.tasks import evaluate_task

        the_task = get_task(task)
        if samples < 1:
            raise ChatsmithError(f"--samples must be at least 1, got {samples}")
        result = evaluate_task(
            loaded.model, loaded.tokenizer, the_task, samples, temperature, max_new_tokens
        )
        if as_json:
            print(json.dumps(result.to_dict()))
        else:
            at_k = f"  pass@{result.k} {result.passk:.4f}" if result.k > 1 else ""
            print(
                f"task {the_task.name}: pass@1 {result.pass1:.4f}{at_k}  "
                f"({result.n} held-out problems, {result.k} samples each)"
            )
            for prompt, reply, r in result.examples:
                print(f"  {'right' if r >= 1 else 'wrong'}: {prompt!r} -> {reply!r}")
        return
    score = evaluate_text(loaded, data or BUILTIN_NAME, batch_size, max_tokens)
    if as_json:
        print(json.dumps(score.to_dict()))
    else:
        print(
            f"loss: {score.loss:.4f} nats/token  bpb: {score.bpb:.4f}  "
            f"tokens: {score.tokens:,}  bytes: {score.bytes:,}"
        )


def _eval_code(run, data, include, samples, max_tokens, device, as_json) -> None:
    from chatsmith.evaluation.code import evaluate_code

    if samples < 1:
        raise ChatsmithError(f"--samples must be at least 1, got {samples}")
    result = evaluate_code(_load(run, device), data, include, samples, max_tokens)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    for k, v in result.to_dict().items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


@app.command()
def complete(
    run: Path = RunArg,
    prefix: Optional[str] = typer.Option(
        None, help="Code before the cursor (\\n and \\t read as newline and tab)."
    ),
    suffix: Optional[str] = typer.Option(
        None, help="Code after the cursor: the model then fills in the middle."
    ),
    file: Optional[Path] = typer.Option(None, help="Complete inside this file, at --line."),
    line: Optional[int] = typer.Option(None, help="With --file: the cursor's line (1-based)."),
    column: int = typer.Option(1, help="With --file: the cursor's column (1-based)."),
    max_tokens: int = typer.Option(128, help="Most new tokens to generate."),
    temperature: float = typer.Option(0.2, help="0 = greedy; higher = more random."),
    top_k: Optional[int] = typer.Option(50, help="Sample among the k likeliest tokens."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass."),
    seed: Optional[int] = typer.Option(None, help="Seed for a reproducible sample."),
    device: str = DeviceOpt,
) -> None:
    """Stream code at a cursor: a continuation of --prefix, or the middle between --prefix and
    --suffix (or between the two halves of --file at --line)."""
    from chatsmith.inference.completion import cursor_text, stream_completion
    from chatsmith.inference.engine import SamplingParams

    prefix, suffix = cursor_text(prefix, suffix, file, line, column)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    params.validate()
    loaded = _load(run, device)
    for piece in stream_completion(loaded.engine(), loaded.tokenizer, prefix, suffix, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _evaluate_family(loaded, data, batch_size, max_tokens, task, max_new_tokens, as_json) -> None:
    if loaded.cfg.arch == "encoder":
        from chatsmith.evaluation.masked import evaluate_masked

        if task is not None:
            raise ChatsmithError("an encoder run is scored on text (--data), not on a --task")
        masked = evaluate_masked(loaded, data, batch_size, max_tokens)
        if as_json:
            print(json.dumps(masked.to_dict()))
        else:
            print(
                f"masked-token loss: {masked.loss:.4f} nats  accuracy: {masked.accuracy:.4f}  "
                f"masked tokens: {masked.tokens:,}"
            )
        return
    from chatsmith.evaluation.seq2seq import evaluate_seq2seq

    name = task or loaded.info.get("args", {}).get("task")
    score = evaluate_seq2seq(loaded, name, max_new_tokens=max_new_tokens, batch_size=batch_size)
    if as_json:
        print(json.dumps(score.to_dict()))
        return
    print(
        f"task {score.task}: loss {score.loss:.4f} nats/target token ({score.tokens:,} tokens)  "
        f"right {score.accuracy:.4f} ({score.n} held-out sources, greedy)"
    )
    for source, reply, ok in score.examples:
        print(f"  {'right' if ok else 'wrong'}: {source!r} -> {reply!r}")


@stage_command(
    app,
    RLConfig,
    start=("run", "Run folder to start from (its latest checkpoint); not needed with --resume."),
    usage="give the run to start from: chatsmith rl RUN --task arithmetic",
)
def rl(config, run, reporter):
    """Improve a chat model by reinforcement learning on a task whose answers can be checked."""
    from chatsmith.training.rl import REWARD_CURVE
    from chatsmith.training.rl import rl as run_rl

    result = run_rl(config, run, reporter)
    curve = Path(result.run_dir) / REWARD_CURVE
    extra = {"reward_curve": str(curve)} if curve.exists() else None
    lines = f"reward curve: {curve}\nnext: chatsmith eval {result.run_dir} --task {config.task}"
    return result, extra, lines + " --samples 4"


@stage_command(
    app,
    SFTConfig,
    start=("base_run", "Pretrained run to fine-tune (its latest checkpoint); not with --resume."),
    usage="give the pretrained run to fine-tune: chatsmith sft BASE_RUN",
    scale=True,
)
def sft(config, run, reporter):
    """Fine-tune a pretrained model on conversations so that it answers as a chat assistant."""
    from chatsmith.training.sft import sft as run_sft

    result = run_sft(config, run, reporter)
    return result, None, f"next: chatsmith chat {result.run_dir}"


CHAT_HELP = (
    "commands: /reset (new conversation), /system TEXT (set the system prompt; "
    "/system alone clears it), /temperature X, /quit"
)


def _chat_turn(session, text: str) -> None:
    """Stream one reply to stdout; Ctrl-C stops the reply, not the chat."""
    session.prompt_ids(text)  # fit the context (or refuse) before the reply line starts
    sys.stdout.write("assistant> ")
    sys.stdout.flush()
    try:
        for piece in session.send(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()


def _chat_command(session, line: str) -> bool:
    """Handle a /command; return False when the chat should end."""
    cmd, _, rest = line.partition(" ")
    if cmd in ("/quit", "/exit"):
        return False
    if cmd == "/reset":
        session.reset()
        say("(new conversation)")
    elif cmd == "/system":
        session.set_system(rest.strip() or None)
        say(f"(system prompt: {session.system!r})" if session.system else "(system prompt cleared)")
    elif cmd == "/temperature":
        try:
            value = float(rest)
        except ValueError:
            raise ChatsmithError("/temperature needs a number, e.g. /temperature 0.7") from None
        session.set_temperature(value)
        say(f"(temperature {value})")
    elif cmd == "/help":
        say(CHAT_HELP)
    else:
        raise ChatsmithError(f"unknown command {cmd}; {CHAT_HELP}")
    return True


@app.command()
def chat(
    run: Path = RunArg,
    prompt: Optional[str] = typer.Option(
        None, "--prompt", "-p", help="Send one message, print the reply and exit (for scripts)."
    ),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    temperature: float = typer.Option(0.8, help="0 = greedy; higher = more random."),
    top_k: Optional[int] = typer.Option(50, help="Sample among the k likeliest tokens."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling mass."),
    max_tokens: int = typer.Option(256, help="Longest reply in tokens."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible replies."),
    device: str = DeviceOpt,
    compile_step: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
) -> None:
    """Chat with a fine-tuned model in the terminal; replies stream in token by token."""
    from chatsmith.inference.chat import ChatSession
    from chatsmith.inference.engine import SamplingParams

    loaded = _load(run, device)
    loaded.check_chat()
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    params.validate()
    engine = loaded.engine(compile=compile_step)
    stage = loaded.info.get("stage")
    if engine.seq2seq:
        say(f"note: {run} is an encoder-decoder; it replies to your last message only")
    elif stage != "sft" and stage is not None and stage not in ("rl", "import"):
        say(
            f"note: {run} is a {stage} run, not fine-tuned for chat; replies may wander "
            f"(fine-tune it first: chatsmith sft {run})"
        )
    session = ChatSession(engine, loaded.tokenizer, params, system=system, notify=say)
    if prompt is not None:
        for piece in session.send(prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    say(
        f"chatting with {run} (step {loaded.step}, context {loaded.cfg.max_seq_len} tokens). "
        + CHAT_HELP
    )
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            break
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/") and not line.startswith("//"):
                if not _chat_command(session, line):
                    break
                continue
            _chat_turn(session, line[1:] if line.startswith("//") else line)
        except ChatsmithError as e:
            say(f"error: {e}")


@app.command()
def quickstart(
    out: Optional[Path] = typer.Option(
        None, "--out", help="Folder for the runs (default: a new one under runs/)."
    ),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", help="Whole-pipeline time budget (default: 13 on CPU, 8 on GPU)."
    ),
    device: str = DeviceOpt,
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help=f"Random seed (default {DEFAULT_SEED})."),
    as_json: bool = JsonOpt,
) -> None:
    """Tokenizer, pretraining, SFT and a sample chat on the built-in data, in one command."""
    from chatsmith.quickstart import plan_for_machine, run_quickstart
    from chatsmith.runtime import resolve_device

    plan = plan_for_machine(resolve_device(device), max_minutes)
    summary = run_quickstart(out or new_run_dir("quickstart"), plan, seed, Reporter())
    if as_json:
        print(json.dumps(summary))
        return
    print(f"base model: {summary['base_run']}  held-out bpb {summary['pretrain']['val_bpb']:.4f}")
    print(f"chat model: {summary['chat_run']}  held-out chat loss {summary['sft']['val_loss']:.4f}")
    print(f"total time: {summary['wall_seconds'] / 60:.1f} min")
    print(f"chat with it: chatsmith chat {summary['chat_run']}")


@app.command()
def serve(
    run: Path = RunArg,
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: Optional[str] = typer.Option(
        None,
        "--api-key",
        envvar="CHATSMITH_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every /v1 call.",
    ),
    allowed_host: Optional[list[str]] = typer.Option(
        None,
        "--allowed-host",
        metavar="NAME",
        help="Also answer requests for this Host name (repeatable; loopback names always).",
    ),
    max_batch: int = typer.Option(16, help="Sequences decoded together (concurrent requests)."),
    max_queue: int = typer.Option(64, help="Requests that may wait for a slot; more get 429."),
    max_tokens: int = typer.Option(1024, help="Most new tokens one request may ask for."),
    max_body_kb: int = typer.Option(1000, help="Largest request body in kilobytes."),
    threads: Optional[int] = typer.Option(
        None, help="CPU threads for the model (default: PyTorch's choice)."
    ),
    device: str = DeviceOpt,
    compile_step: bool = typer.Option(False, "--compile", help=COMPILE_HELP),
) -> None:
    """Serve a model over an OpenAI-compatible API, with a chat page at /."""
    from chatsmith.serving.config import ServeLimits

    try:
        import uvicorn

        from chatsmith.serving.app import create_app
        from chatsmith.serving.live import uvicorn_config
        from chatsmith.serving.middleware import allowed_hosts_for, is_loopback
    except ImportError as e:
        raise ChatsmithError(
            f"serving needs the 'serve' extra: pip install 'chatsmith[serve]' ({e.name} is missing)"
        ) from None
    limits = ServeLimits(
        max_tokens=max_tokens,
        default_max_tokens=min(256, max_tokens),
        max_batch=max_batch,
        max_queue=max_queue,
        max_body_bytes=max_body_kb * 1000,
    )
    limits.validate()
    if api_key is None:  # click ignores an empty environment variable: it must not mean "no key"
        api_key = os.environ.get("CHATSMITH_API_KEY")
    if api_key is not None and not api_key.strip():
        raise ChatsmithError(
            "the API key (--api-key or CHATSMITH_API_KEY) is empty: give a key, or unset it"
        )
    if not 0 <= port <= 65535:
        raise ChatsmithError(f"--port must be between 0 and 65535, got {port}")
    if threads is not None:
        if threads < 1:
            raise ChatsmithError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    loaded = _load(run, device)
    application = create_app(
        loaded,
        limits,
        api_key,
        allowed_hosts_for(host, allowed_host or ()),
        compile_step=compile_step,
    )
    if api_key is None and not is_loopback(host):
        print(
            f"warning: listening on {host} without an API key: anyone who can reach this "
            "address can use the model (set --api-key or CHATSMITH_API_KEY)",
            file=sys.stderr,
        )
    say(f"serving {loaded.name} at http://{host}:{port}/  (API: http://{host}:{port}/v1)")
    try:
        uvicorn.Server(uvicorn_config(application, host=host, port=port)).run()
    except OSError as e:
        raise ChatsmithError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


@app.command("import")
def import_model(
    source: str = typer.Argument(..., help="A Hugging Face model folder, or hf:NAME."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (must not exist)."),
    max_seq_len: Optional[int] = typer.Option(
        None, "--max-seq-len", help="Context to allocate (default: the model's, at most 4096)."
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto (as stored), bf16 or fp32."),
) -> None:
    """Import an open model (Llama, Mistral, Qwen2, Qwen3 layouts; BERT encoders) as a run."""
    from chatsmith.interop.hf_import import import_hf

    result = import_hf(source, out, max_seq_len=max_seq_len, dtype=dtype)
    say(
        f"imported {result.family} model ({result.n_params / 1e6:.2f}M parameters, context "
        f"{result.cfg.max_seq_len}, tokenizer {result.tokenizer_vocab} tokens) into {result.out}"
    )


@app.command("export")
def export_model(
    run: Path = RunArg,
    out: Path = typer.Argument(..., help="Folder to write (must not exist or be empty)."),
    to: str = typer.Option("hf", "--to", help="Format: hf (Hugging Face transformers)."),
) -> None:
    """Export a decoder run as a Hugging Face model folder (transformers, vLLM, converters)."""
    from chatsmith.interop.hf_export import export_run

    path, family = export_run(run, out, to)
    say(f"exported {run} as a {family} model to {path}")


@app.command()
def bench(
    run: Path = RunArg,
    batch: str = typer.Option("1,4,16,64", "--batch", help="Batch sizes to measure, e.g. 1,4,16."),
    prompt_tokens: Optional[int] = typer.Option(
        None, help="Prompt length (default 512, or half the context if that is shorter)."
    ),
    new_tokens: Optional[int] = typer.Option(
        None, help="Tokens generated per sequence (default 256, or a quarter of the context)."
    ),
    price_per_hour: Optional[float] = typer.Option(
        None, help="The machine's rental price per hour (any currency): adds cost figures."
    ),
    query: Optional[str] = typer.Option(
        None, help="Query shape PROMPT:REPLY in tokens for the cost per query, e.g. 500:300."
    ),
    latency_slo: Optional[str] = typer.Option(
        None, help="Per-token latency target, e.g. 50ms: the cheapest batch that meets it."
    ),
    peak_tflops: Optional[float] = typer.Option(
        None, help="The device's peak TFLOP/s (default: datasheet, or an estimate on CPU)."
    ),
    mem_gbps: Optional[float] = typer.Option(
        None, help="The device's peak memory bandwidth in GB/s (default: as --peak-tflops)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="PNG to write; the JSON goes beside it (default: RUN/bench.png)."
    ),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: PyTorch's choice)."),
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Measure serving speed (prefill, decode, latency per batch size) and what it costs."""
    from chatsmith.evaluation.bench import BenchConfig, run_bench
    from chatsmith.evaluation.bench_report import summary, write_outputs

    cfg = BenchConfig.from_flags(
        batch, prompt_tokens, new_tokens, price_per_hour, query, latency_slo, peak_tflops, mem_gbps
    )
    if threads is not None:
        if threads < 1:
            raise ChatsmithError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    loaded = _load(run, device)
    report = run_bench(loaded, cfg, progress=sys.stderr.isatty())
    png, json_path = write_outputs(report, out if out is not None else Path(run) / "bench.png")
    if as_json:
        print(json.dumps(report))
        return
    print("\n".join(summary(report)))
    print(f"plot: {png}" if png else "plot: skipped (pip install 'chatsmith[plot]')")
    print(f"figures: {json_path}")


@app.command()
def attention(
    run: Path = RunArg,
    text: str = typer.Option(..., "--text", help="The text whose attention to draw."),
    out: Path = typer.Option(Path("attention.png"), "--out", help="PNG to write."),
    layer: Optional[int] = typer.Option(None, help="Layer of the enlarged map (default: last)."),
    head: int = typer.Option(0, help="Head of the enlarged map."),
    device: str = DeviceOpt,
) -> None:
    """Draw attention weights as heat maps: every layer and head, and one head enlarged."""
    from chatsmith.evaluation.attention_plot import plot_attention
    from chatsmith.inference.attention import attention_maps

    loaded = _load(run, device)
    maps = attention_maps(loaded.model, loaded.tokenizer, text)
    path = plot_attention(maps, out, layer, head)
    print(
        f"attention maps: {path} ({len(maps.tokens)} tokens, {maps.weights.shape[0]} layers x "
        f"{maps.weights.shape[1]} heads)"
    )


@app.command()
def tokenize(
    data: str = typer.Argument(
        ..., help="Text file, folder, .jsonl, .parquet or hf:NAME[:split] to tokenize."
    ),
    tokenizer: str = typer.Option(
        ..., "--tokenizer", help="A run folder or tokenizer.json to use, or 'new' to train one."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the shards (resumed if interrupted)."),
    shard_tokens: int = typer.Option(100_000_000, help="Tokens per shard."),
    val_share: float = typer.Option(0.005, help="Share of documents held out (val.bin)."),
    vocab_size: int = typer.Option(
        PretrainConfig.vocab_size, help="With --tokenizer new: BPE vocabulary size."
    ),
    tokenizer_mb: float = typer.Option(100.0, help="With --tokenizer new: MB of text to train on."),
    workers: Optional[int] = typer.Option(None, help="Tokenizing processes (default: all cores)."),
) -> None:
    """Tokenize a corpus once into memory-mapped shards for `chatsmith pretrain --data SHARDS`."""
    from tqdm import tqdm

    from chatsmith.data.shards import resolve_tokenizer, write_shards
    from chatsmith.data.sources import iter_documents, local_size

    tok_file = resolve_tokenizer(tokenizer, iter_documents(data), out, vocab_size, tokenizer_mb)
    bar = tqdm(
        total=local_size(data), unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr
    )

    def on_progress(p) -> None:
        bar.set_postfix_str(f"{p.documents:,} docs, {p.tokens:,} tokens", refresh=False)
        bar.update(p.bytes - bar.n)

    index = write_shards(
        iter_documents(data), tok_file, out, shard_tokens, val_share, workers, on_progress
    )
    bar.close()
    train = sum(s["tokens"] for s in index["train"])
    print(
        f"shards: {out}  {len(index['train'])} training shards, {train:,} tokens "
        f"({index['dtype']}), held out {index['val']['tokens']:,} tokens"
    )
    print(f"next: chatsmith pretrain --data {out}")


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

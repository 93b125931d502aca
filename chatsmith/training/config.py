"""Typed settings of the training stages: one dataclass per stage, defaults written once.

`RunConfig` holds what every stage shares (where the run goes, its budget, device and seed);
`TrainConfig` holds what the training loop reads (batch, optimizer, schedule, evaluation and
checkpoint cadence); each stage config extends it with its own fields and overrides the loop
defaults it needs. A field declared with `option(..., help=...)` is a command-line flag: the
CLI builds `--field-name` from it, and the help text gets its default appended from here.
On `--resume`, `resume_config` reads the run's saved settings back and lets only flags given
again override them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from chatsmith.data.chitchat import BUILTIN_NAME
from chatsmith.errors import ChatsmithError

if TYPE_CHECKING:
    import torch

DEFAULT_SEED = 1337
# CPU runs compile by default only when they last this long: compiling the default model took
# 30-40 s on 2 busy cores (a few seconds once cached), and then saved ~20% of every step
COMPILE_MIN_MINUTES = 2.0


DEFAULT_LR, DEFAULT_MUON_LR = 3e-3, 0.02
# Rates tuned for a preset where they beat the defaults above: `narrow`, the CPU default, in
# 5-minute runs on 2 cores (benchmarks/RESULTS.md, issue 14). The larger presets keep the usual
# rates of GPU-sized models.
PRESET_RATES: dict[str, dict[str, float]] = {"narrow": {"lr": 6e-3, "muon_lr": 0.008}}


def option(default: Any, help: str | None = None, flag: str | None = None) -> Any:
    """A config field; with `help` it is also a command-line flag (`flag` overrides its name,
    e.g. "--compile/--no-compile")."""
    return field(default=default, metadata={"help": help, "flag": flag} if help else {})


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a config class that are command-line flags, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def help_text(f: dataclasses.Field) -> str:
    """A flag's help with its default from the dataclass (None means the help says it)."""
    text, default = f.metadata["help"], f.default
    if default is None or default is dataclasses.MISSING:
        return text
    if isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    return f"{text.rstrip('.')} (default {shown})."


@dataclass
class RunConfig:
    """What every training stage takes, with the same meaning everywhere."""

    out: Path
    resume: bool = False
    max_minutes: float | None = None
    max_steps: int | None = None
    device: torch.device = field(default_factory=lambda: _cpu())
    seed: int = DEFAULT_SEED
    # resume even if the data's fingerprint differs (with a warning); asked anew each time,
    # so run.json does not keep it
    allow_data_change: bool = False
    parallel: str | None = None  # ddp or fsdp under torchrun (ddp when WORLD_SIZE > 1)
    activation_checkpointing: bool = False

    def budget(self) -> dict:
        """What run.json keeps of these settings (read back on --resume)."""
        return {"seed": self.seed, "max_minutes": self.max_minutes, "max_steps": self.max_steps}


@dataclass
class TrainConfig:
    """What the training loop reads; stage configs extend it."""

    default_minutes: ClassVar[float] = 5.0  # the time budget when none is given
    # whether the stage stores a fingerprint of its data (then --allow-data-change exists)
    fingerprints_data: ClassVar[bool] = False
    batch_size: int = option(16, "Sequences per micro-batch.")
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    lr: float = option(DEFAULT_LR, "Peak learning rate.")
    min_lr_ratio: float = option(
        0.1, "Learning rate at the end of the cosine decay, as a share of the peak."
    )
    warmup_steps: int = option(30, "Steps of linear learning-rate warmup.")
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = option("adamw", "muon (AdamW for embeddings and norms) or adamw.")
    muon_lr: float = option(
        DEFAULT_MUON_LR, "Peak learning rate of Muon's matrices (--optimizer muon)."
    )
    eval_every: int = option(200, "Steps between held-out evaluations.")
    log_every: int = option(10, "Steps between logged training figures.")
    save_every: int = option(500, "Steps between checkpoints.")
    keep_last: int = 3
    precision: str = option(
        "auto",
        "Autocast dtype: bf16, fp32, or auto (bf16 on CUDA and on CPUs with native bf16 "
        "matmuls: AVX-512 BF16 or AMX; fp32 elsewhere).",
    )
    compile: bool | None = option(
        None,
        "torch.compile the model (default: on CUDA, and on CPU for time budgets of "
        f"{COMPILE_MIN_MINUTES:g} minutes or more, where the 30-40 s of compiling pays back).",
        "--compile/--no-compile",
    )

    def __post_init__(self) -> None:
        from chatsmith.runtime import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ChatsmithError(
                f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}"
            )

    def use_compile(self, run: RunConfig) -> bool:
        """Whether this run compiles its model: as asked, else by the rule in the flag's help."""
        from chatsmith.runtime import can_compile

        if self.compile is not None:
            return self.compile
        if run.device.type == "cuda":
            return True
        long_run = (run.max_minutes or 0) >= COMPILE_MIN_MINUTES
        return run.device.type == "cpu" and long_run and can_compile(run.device)


@dataclass
class PretrainConfig(TrainConfig):
    """`chatsmith pretrain`: a BPE tokenizer and a model trained from scratch (a decoder on
    raw text by default)."""

    default_minutes: ClassVar[float] = 5.0
    arch: str = option(
        "decoder",
        "decoder (GPT), encoder (BERT-style masked-LM, for embeddings) or encoder_decoder "
        "(the original Transformer; needs --task)",
    )
    task: str | None = option(
        None,
        "Learn a sequence-to-sequence task instead of text: chitchat-reply, arithmetic or a "
        '.jsonl of {"source", "target"} lines.',
    )
    fingerprints_data: ClassVar[bool] = True
    data: str = option(
        BUILTIN_NAME,
        "Text file, folder, .jsonl (text field), .parquet, hf:NAME[:split], a folder of token "
        "shards (chatsmith tokenize), the built-in corpus or builtin:python-stdlib (code)",
    )
    val_data: str | None = option(
        None, "Held-out data (default: the built-in split, or the last 5% of --data)."
    )
    vocab_size: int = option(8192, "BPE vocabulary size")
    preset: str = option("narrow", "Size: tiny, narrow, mini, small, base, gpt2-small, gpt2-medium")
    depth: int | None = option(
        None, "One dial for size: layers = depth, width = 64 x depth, 64-wide heads."
    )
    seq_len: int = option(256, "Context length in tokens")
    n_kv_head: int | None = option(None, "Key/value heads (fewer = grouped-query).")
    # not flags: layer counts for callers that size families to equal parameters (benchmarks)
    n_layer: int | None = None
    n_decoder_layer: int | None = None
    max_text_mb: float = 512.0
    optimizer: str = option("muon", "muon (AdamW for embeddings and norms) or adamw")
    include: str | None = option(
        None,
        'Source-file patterns, e.g. "*.py,*.rs": --data is then a folder of code, one '
        "document per file (builtin:python-stdlib needs none).",
    )
    fim: float = option(0.0, "Share of the data (0-1) turned into fill-in-the-middle examples")
    lr: float | None = option(
        None, f"Peak learning rate of AdamW (default: the preset's, {DEFAULT_LR:g} where none)."
    )
    muon_lr: float | None = option(
        None,
        f"Peak learning rate of Muon's matrices (default: the preset's, {DEFAULT_MUON_LR:g} "
        "where none).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        rates = PRESET_RATES.get(self.preset, {}) if self.depth is None else {}
        if self.lr is None:
            self.lr = rates.get("lr", DEFAULT_LR)
        if self.muon_lr is None:
            self.muon_lr = rates.get("muon_lr", DEFAULT_MUON_LR)


@dataclass
class SFTConfig(TrainConfig):
    """`chatsmith sft`: chat fine-tuning of a pretrained run."""

    default_minutes: ClassVar[float] = 3.0
    fingerprints_data: ClassVar[bool] = True
    base_run: str | None = None  # the command's argument
    data: str | None = option(
        None,
        'Chat data: .jsonl of {"messages": [...]} lines, a folder of them, or '
        "hf:NAME[:split]. Default: the built-in chitchat conversations.",
    )
    val_data: str | None = option(
        None, "Held-out chat data (default: the built-in split, or the last 5% of --data)."
    )
    task: str | None = option(
        None, "Fine-tune on a task's worked examples instead of --data (e.g. arithmetic)."
    )
    max_conversations: int | None = option(None, "Use at most this many training conversations.")
    batch_size: int = option(16, "Examples per micro-batch")
    lr: float = option(1e-3, "Peak learning rate")
    warmup_steps: int = 10
    eval_every: int = option(100, "Steps between held-out evaluations")
    save_every: int = option(200, "Steps between checkpoints")
    # off: padded batches change length from step to step, and each new length would make
    # torch.compile recompile (on an H200 the first SFT step then ate a 30 s budget)
    compile: bool | None = False


@dataclass
class RLConfig(TrainConfig):
    """`chatsmith rl`: GRPO-style reinforcement learning on a task with checkable answers."""

    default_minutes: ClassVar[float] = 10.0
    run: str | None = None  # the command's argument
    start_checkpoint: str | None = None  # recorded: the checkpoint the run started from
    task: str = option(
        "arithmetic", "arithmetic, arithmetic:LEVEL (1-3), a .jsonl or a .py task file"
    )
    group_size: int = option(8, "Replies sampled per prompt")
    prompts_per_step: int = option(8, "Prompts per step")
    kl: float = option(0.0, "Weight of the KL penalty to the starting model; 0 turns it off")
    lr: float = option(1e-4, "Learning rate, constant")
    max_new_tokens: int = option(32, "Longest reply sampled")
    temperature: float = option(1.0, "Sampling temperature")
    top_k: int | None = None
    std_normalize: bool = option(
        False,
        "Divide advantages by the group's reward std",
        "--std-normalize/--no-std-normalize",
    )
    skip_flat_groups: bool = option(
        True,
        "Drop groups whose replies all scored the same (they teach nothing) and sample more "
        "prompts instead, so every step trains on --prompts-per-step informative groups",
        "--skip-flat-groups/--keep-flat-groups",
    )
    sample_rounds: int = option(
        4, "Most rounds of --prompts-per-step prompts sampled for one step (--skip-flat-groups)"
    )
    # a check costs about as much as a step's sampling; every 50 steps keeps the curve
    eval_every: int = option(50, "Steps between held-out pass@1 checks")
    eval_prompts: int = 100
    save_every: int = option(50, "Steps between checkpoints")
    max_batch: int = 64
    # fixed loop settings: a constant learning rate after no warm-up, no weight decay, a log
    # line every step, and no compile (reply lengths change every step; recompiling would
    # cost more than it saves); the batch is prompts_per_step x group_size sequences
    warmup_steps: int = option(0, "Steps of linear learning-rate warmup (then constant)")
    min_lr_ratio: float = 1.0
    weight_decay: float = 0.0
    log_every: int = 1
    batch_size: int = 64
    grad_accum: int = 1
    optimizer: str = "adamw"
    muon_lr: float = DEFAULT_MUON_LR  # unused: RL's optimizer is AdamW
    compile: bool | None = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.batch_size = self.prompts_per_step * self.group_size


def _cpu() -> torch.device:
    import torch  # here, not at the top: `chatsmith --help` must not wait for torch

    return torch.device("cpu")


def new_run_dir(stage: str) -> Path:
    # under torchrun every process must name the same folder: the job's id does
    stamp = os.environ.get("TORCHELASTIC_RUN_ID") or time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stage}-{stamp}"


def resolve_run(
    stage: str,
    default_minutes: float,
    out: Path | None,
    resume: Path | None,
    max_minutes: float | None,
    max_steps: int | None,
    device: torch.device,
    seed: int | None,
    allow_data_change: bool = False,
) -> RunConfig:
    """The shared run settings; on --resume the run's own settings win unless given again."""
    from chatsmith.checkpoint import read_run_info

    saved: dict = {}
    if resume is not None:
        if out is not None and Path(out) != Path(resume):
            raise ChatsmithError("--out and --resume name different folders; give one")
        saved = read_run_info(resume).get("flags", {})
        out = resume
    elif out is None:
        out = new_run_dir(stage)
    elif (Path(out) / "latest").exists():
        raise ChatsmithError(f"{out} already holds a run; use --resume {out} or another --out")
    if max_minutes is None and max_steps is None:
        defaults = {"max_minutes": default_minutes, "max_steps": None}
        max_minutes, max_steps = (saved.get(k, defaults[k]) for k in defaults)
    return RunConfig(
        out=Path(out),
        resume=resume is not None,
        max_minutes=max_minutes,
        max_steps=max_steps,
        device=device,
        seed=seed if seed is not None else saved.get("seed", DEFAULT_SEED),
        allow_data_change=allow_data_change,
    )


def resume_config(cls: type, run: RunConfig, given: dict) -> Any:
    """A stage config: its defaults, then (on resume) the run's saved settings, then the
    values given (None = not given). Saved keys the class no longer has are ignored."""
    from chatsmith.checkpoint import read_run_info

    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict = {}
    if run.resume:
        saved = read_run_info(run.out).get("args", {})
        values.update({k: v for k, v in saved.items() if k in names})
    values.update({k: v for k, v in given.items() if v is not None})
    return cls(**values)

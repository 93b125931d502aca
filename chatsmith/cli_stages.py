"""The training commands' shared shape: options built from a stage config, one run resolution,
one report.

`stage_command(app, PretrainConfig)` turns a function `(config, run, reporter) -> (result,
extra figures, next-step text)` into a command whose options are the config's flag fields
(help and defaults from the dataclass), plus the run options every stage shares and `--json`.
The command resolves the run (new folder or `--resume`, budget, device, seed), merges the given
flags over the defaults (or over the resumed run's saved settings), runs, and reports.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer

from chatsmith.errors import ChatsmithError
from chatsmith.reporting import Reporter
from chatsmith.training.config import (
    DEFAULT_SEED,
    TrainConfig,
    cli_fields,
    help_text,
    resolve_run,
    resume_config,
)

StageFn = Callable[..., tuple]


def _param(name: str, annotation: object, default: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _config_params(config_cls: type) -> list[inspect.Parameter]:
    hints = typing.get_type_hints(config_cls)
    loop_fields = {f.name for f in cli_fields(TrainConfig)}
    params = []
    # the stage's own flags first, then the training loop's
    for f in sorted(cli_fields(config_cls), key=lambda f: f.name in loop_fields):
        base = next(
            a for a in typing.get_args(hints[f.name]) or (hints[f.name],) if a is not type(None)
        )
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        params.append(_param(f.name, Optional[base], typer.Option(None, flag, help=help_text(f))))
    return params


def _run_params(config_cls: type) -> list[inspect.Parameter]:
    default_minutes = config_cls.default_minutes

    def opt(flag: str, help: str) -> typer.models.OptionInfo:
        return typer.Option(None, flag, help=help)

    params = [
        _param(
            "out",
            Optional[Path],
            opt("--out", "Run folder to write (default: a new one under runs/)."),
        ),
        _param(
            "resume",
            Optional[Path],
            opt("--resume", "Continue the interrupted run in this folder."),
        ),
        _param(
            "max_minutes",
            Optional[float],
            opt("--max-minutes", f"Training-time budget in minutes (default {default_minutes:g})."),
        ),
        _param("max_steps", Optional[int], opt("--max-steps", "Budget in optimizer steps.")),
        _param(
            "device", str, typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.")
        ),
        _param("seed", Optional[int], opt("--seed", f"Random seed (default {DEFAULT_SEED}).")),
        _param(
            "as_json",
            bool,
            typer.Option(False, "--json", help="Print the figures as one JSON object."),
        ),
    ]
    if config_cls.fingerprints_data:  # only a stage whose run.json holds a data fingerprint
        help = "With --resume: go on (with a warning) if the data changed."
        flag = typer.Option(False, "--allow-data-change", help=help)
        params.append(_param("allow_data_change", bool, flag))
    return params


def report(result, as_json: bool, extra: dict | None = None) -> None:
    """A training stage's figures on stdout: one JSON object, or lines for people."""
    figures = {**result.to_dict(), **(extra or {})}
    if as_json:
        print(json.dumps(figures))
        return
    print(f"run folder: {result.run_dir}")
    print(
        f"steps: {result.step}  training time: {result.train_seconds:.1f}s  "
        f"tokens: {result.tokens:,}"
    )
    for k, v in result.final_eval.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


def stage_command(
    app: typer.Typer,
    config_cls: type,
    start: tuple[str, str] | None = None,
    usage: str = "",
) -> Callable[[StageFn], Callable]:
    """Register `fn` as the command named after it. `start` = (config field, help) adds the
    positional run a derived stage starts from; `usage` is the error when it is missing."""

    def decorate(fn: StageFn) -> Callable:
        def command(**kw) -> None:
            from chatsmith.runtime import resolve_device

            as_json = kw.pop("as_json")
            out, resume = kw.pop("out"), kw.pop("resume")
            if start is not None:
                if kw[start[0]] is None and resume is None:
                    raise ChatsmithError(usage)
                # a resumed run keeps the run it was created from: the argument is then ignored
                kw[start[0]] = None if resume is not None else str(kw[start[0]])
            run = resolve_run(
                fn.__name__,
                config_cls.default_minutes,
                out,
                resume,
                kw.pop("max_minutes"),
                kw.pop("max_steps"),
                resolve_device(kw.pop("device")),
                kw.pop("seed"),
                kw.pop("allow_data_change", False),
            )
            config = resume_config(config_cls, run, kw)
            reporter = Reporter()
            reporter.say(f"run folder: {run.out}  device: {run.device}")
            result, extra, next_steps = fn(config, run, reporter)
            report(result, as_json, extra)
            if not as_json:
                print(next_steps)

        params = _config_params(config_cls) + _run_params(config_cls)
        if start is not None:
            arg = typer.Argument(None, help=start[1], metavar=start[0].upper())
            params.insert(
                0,
                inspect.Parameter(
                    start[0],
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=arg,
                    annotation=Optional[Path],
                ),
            )
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        app.command(fn.__name__)(command)
        return command

    return decorate

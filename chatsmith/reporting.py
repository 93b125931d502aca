"""One reporter for progress and messages, handed from the CLI to every stage and the loop.

Messages (`say`) and progress (`begin`, `advance`, `end`) go to stderr, so stdout stays clean
for figures and generated text. A stage announces a phase with no steps (`phase`, e.g.
"tokenizer"); the training loop opens its step loop with `begin` (named after the stage) and
reports each step with `advance`. Callers that
want another display (quickstart's one bar for the whole pipeline, tests' silence) subclass
`Reporter` or pass `quiet=True`.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class Reporter:
    """Progress bar per phase plus messages, on stderr; `quiet=True` shows nothing."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar: tqdm | None = None

    def say(self, msg: str) -> None:
        """A message; printed above the progress bar when one is showing."""
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def phase(self, name: str) -> None:
        """A stage enters a phase with no steps to count (e.g. training the tokenizer)."""

    def shows_tool_progress(self) -> bool:
        """Whether a phase may let a library draw its own progress on stderr (the tokenizer
        trainer's bars); not when quiet, nor for a reporter that shows one bar for all."""
        return not self.quiet

    def begin(self, name: str, total: int | None, done: int = 0) -> None:
        """A loop of steps starts: `total` of them (None: a time budget), `done` already."""
        self.end()
        self.bar = tqdm(
            total=total,
            initial=done,
            disable=self.quiet,
            file=sys.stderr,
            desc=name,
            dynamic_ncols=True,
            unit="step",
        )

    def advance(self, step: int, fraction: float, status: str) -> None:
        """One step done; `fraction` of the phase's budget is spent; `status` is a short line."""
        if self.bar is not None:
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.update(1)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

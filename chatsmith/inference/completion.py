"""Code completion at a cursor: text before it (prefix) and, optionally, text after it (suffix).

With a suffix the prompt is a fill-in-the-middle prompt (see `chatsmith.data.fim`) and the
model writes the middle, stopping at `<|end|>`; without one it simply continues the prefix.
The middle also ends where the model starts to write the text after the cursor, through its
first non-blank line (`suffix_stops`): the stop editors apply, and the one a small model
needs, since it writes the right code well before it learns to write `<|end|>` after it
(benchmarks/RESULTS.md, issue 12).
The CLI (`chatsmith complete`), the server (`suffix` in /v1/completions) and `eval --code` all
build their prompts here and generate through the shared engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from chatsmith.data.fim import infill_prompt
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.streaming import StopFilter, TextStream
from chatsmith.tokenizer import Tokenizer


def completion_prompt(
    tok: Tokenizer, prefix: str | None, suffix: str | None, budget: int
) -> list[int]:
    """Prompt ids of at most `budget` tokens; text far from the cursor is dropped first."""
    if prefix is None:
        if suffix is not None:
            raise ChatsmithError("a suffix needs a prefix: give the text before the cursor too")
        raise ChatsmithError("give the text before the cursor (a prefix)")
    if suffix:
        return infill_prompt(tok, prefix, suffix, budget)
    if budget < 2:
        raise ChatsmithError("the context is too small for a prompt")
    ids, start = tok.encode(prefix), tok.doc_start
    return [*start, *ids[max(0, len(ids) - (budget - len(start))) :]]


def suffix_stops(suffix: str | None) -> list[str]:
    """Stop strings of an infill: the suffix through its first non-blank line, so the middle
    ends where the model starts to write what follows the cursor (`"x)\\n..."` -> `"x)"`,
    `"\\n\\n    return x\\n..."` -> `"\\n\\n    return x"`). A short rest of a line can also cut a
    right middle short (a middle `f(x)` before `)`), but a small model gains far more than it
    loses (benchmarks/RESULTS.md, issue 12: inside a line, 0.8% -> 4.2% exact)."""
    lines = (suffix or "").split("\n")
    for i, line in enumerate(lines):
        if line.strip():
            return ["\n".join(lines[: i + 1])]
    return []


def prompt_budget(context: int, max_tokens: int) -> int:
    """Prompt room that leaves the reply at least `max_tokens` or half the context."""
    return context - min(max_tokens, context // 2)


def stream_completion(
    engine: Engine,
    tok: Tokenizer,
    prefix: str | None,
    suffix: str | None,
    params: SamplingParams,
) -> Iterator[str]:
    """Text pieces of the completion (the middle, when there is a suffix) as they decode."""
    ids = completion_prompt(tok, prefix, suffix, prompt_budget(engine.context, params.max_tokens))
    stream, stops = TextStream(tok), StopFilter(suffix_stops(suffix))
    for token in engine.generate(ids, params):
        piece = stops.push(stream.push(token))
        if piece:
            yield piece
        if stops.stopped:
            return
    tail = stops.push(stream.flush()) + stops.flush()
    if tail:
        yield tail


def cursor_in_file(path: str | Path, line: int, column: int = 1) -> tuple[str, str]:
    """(prefix, suffix) of a source file split at a cursor (1-based line and column). Column 1
    of a line after the first is taken as the end of the line before it."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise ChatsmithError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ChatsmithError(f"{p} is not UTF-8 text; complete only source files") from None
    lines = text.splitlines(keepends=True)
    if not 1 <= line <= len(lines) + 1:
        raise ChatsmithError(f"--line must be between 1 and {len(lines) + 1} for {p}, got {line}")
    row = lines[line - 1] if line <= len(lines) else ""
    if not 1 <= column <= len(row.rstrip("\r\n")) + 1:
        raise ChatsmithError(
            f"--column must be between 1 and {len(row.rstrip(chr(10) + chr(13))) + 1} "
            f"on line {line}, got {column}"
        )
    at = sum(len(x) for x in lines[: line - 1]) + column - 1
    if column == 1 and line > 1:
        # a cursor at the start of a line sits, for the model, at the end of the line before:
        # the completion is then new lines inserted there (its text starts with a line break),
        # which is how FIM training and `eval --code` cut a middle. From the start of the line,
        # the same 10-minute model got 1.0% of single lines exactly against 7.2% (RESULTS.md).
        at -= len(lines[line - 2]) - len(lines[line - 2].rstrip("\r\n"))
    return text[:at], text[at:]


def read_escapes(text: str | None) -> str | None:
    """Command-line text: \\n and \\t read as a newline and a tab, \\\\ as a backslash."""
    if text is None:
        return None
    table = {"n": "\n", "t": "\t", "\\": "\\"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def cursor_text(
    prefix: str | None,
    suffix: str | None,
    file: str | Path | None,
    line: int | None,
    column: int = 1,
) -> tuple[str, str | None]:
    """(prefix, suffix) from `complete`'s options: --prefix/--suffix (escapes read), or a
    cursor in --file at --line/--column. Checked before any model is loaded."""
    if file is not None:
        if prefix is not None or suffix is not None:
            raise ChatsmithError("give either --file (with --line) or --prefix/--suffix, not both")
        if line is None:
            raise ChatsmithError("--file needs --line: the cursor's line number")
        return cursor_in_file(file, line, column)
    if line is not None:
        raise ChatsmithError("--line goes with --file")
    prefix, suffix = read_escapes(prefix), read_escapes(suffix)
    if prefix is None:
        raise ChatsmithError(
            "a suffix needs a prefix: give --prefix (the code before the cursor) too"
            if suffix is not None
            else "give --prefix TEXT or --file FILE --line N"
        )
    return prefix, suffix

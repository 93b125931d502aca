"""Read text documents from what a user points at: a file, a folder, JSONL, Parquet or `hf:NAME`.

Plain text and JSONL files are read line by line, so the first documents arrive at once and
memory does not grow with the file (a bad byte or record is reported by line when reached).
.json, Parquet and Hugging Face datasets go through the `datasets` library's streaming loaders,
so a local file and a hub dataset take the same path; only the name passed to `load_dataset`
differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from chatsmith.errors import ChatsmithError

TEXT_SUFFIXES = {".txt", ".md", ".text"}
SUFFIX_BUILDER = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SUFFIX_BUILDER.update({s: "text" for s in TEXT_SUFFIXES})


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIX_BUILDER)
        if not files:
            raise ChatsmithError(
                f"folder {path} holds no data files ({', '.join(sorted(SUFFIX_BUILDER))})"
            )
        return files
    if not path.exists():
        raise ChatsmithError(f"data file {path} does not exist")
    return [path]


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, read one line at a time so that memory is
    bounded by the longest line, not the file; line ends come out as "\n" (as in text mode).
    A bad byte is an error naming its line, raised when reading reaches it."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ChatsmithError(f"cannot read {path}: {e.strerror}") from None
    with f:
        n = 0
        while True:
            try:
                raw = f.readline()
            except OSError as e:  # e.g. a device or special file that cannot be read
                raise ChatsmithError(f"cannot read {path}: {e.strerror}") from None
            if not raw:
                return
            n += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ChatsmithError(
                    f"{path}:{n}: not UTF-8 text (bad byte at column {e.start + 1}); "
                    "convert it, e.g. with iconv"
                ) from None
            yield n, line.replace("\r\n", "\n").replace("\r", "\n")


def _check_readable_text(path: Path) -> None:
    """Read the whole file once, line by line, for its encoding; an empty file is an error."""
    if not any(line.strip() for _, line in utf8_lines(path)):
        raise ChatsmithError(f"data file {path} is empty")


def _text_documents(path: Path) -> Iterator[str]:
    """A plain text file: documents are separated by blank lines, and come out as they are
    read (memory holds one document)."""
    parts: list[str] = []  # the document being read; it holds no "\n\n" separator yet
    seen = False
    for _, line in utf8_lines(path):
        seen = seen or bool(line.strip())
        # a new separator involves this line: inside it, or across the previous line's end
        if "\n\n" in line or (parts and parts[-1].endswith("\n") and line.startswith("\n")):
            *docs, rest = "".join([*parts, line]).split("\n\n")
            yield from (doc.strip("\n") for doc in docs if doc.strip())
            parts = [rest]
        else:
            parts.append(line)
    last = "".join(parts)
    if last.strip():
        yield last.strip("\n")
    if not seen:
        raise ChatsmithError(f"data file {path} is empty")


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    """JSON lines, parsed as they are read: the first records arrive before the file ends."""
    seen = False
    for n, line in utf8_lines(path):
        if not line.strip():
            continue
        seen = True
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatsmithError(
                f"cannot read {path}: line {n} is not JSON ({e.msg} at column {e.colno})"
            ) from None
        text = _text_of(record, field, f"{path}:{n}")
        if text.strip():
            yield text
    if not seen:
        raise ChatsmithError(f"data file {path} is empty")


def _records(builder: str, files: list[str], field: str) -> Iterator[str]:
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        stream = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        yield from _field_of(stream, field, files[0])
    except ChatsmithError:
        raise
    except Exception as e:  # datasets wraps parse errors in many types
        raise ChatsmithError(f"cannot read {files[0]}: {str(e).splitlines()[0][:200]}") from None


def _text_of(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict) or field not in record:
        raise ChatsmithError(f"{where} has no '{field}' field")
    value = record[field]
    if not isinstance(value, str):
        raise ChatsmithError(f"{where} field '{field}' is not text")
    return value


def _field_of(stream, field: str, where: str) -> Iterator[str]:
    for i, row in enumerate(stream):
        value = _text_of(row, field, f"{where}: record {i + 1}")
        if value.strip():
            yield value


def stream_hf(spec: str, example: str) -> Iterator[dict]:
    """The rows of a Hugging Face dataset named `hf:NAME[:split]`, streamed (no full download);
    failures to find or reach it are one-line errors. `example` is a name for the message."""
    import datasets

    name, _, split = spec[3:].partition(":")
    if not name:
        raise ChatsmithError(f"hf: needs a dataset name, e.g. hf:{example}")
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        yield from datasets.load_dataset(name, split=split or "train", streaming=True)
    except ChatsmithError:
        raise
    except Exception as e:  # datasets raises many types for missing/unreachable datasets
        raise ChatsmithError(f"cannot stream {spec}: {str(e).splitlines()[0][:200]}") from None


def iter_documents(spec: str | Path, field: str = "text") -> Iterator[str]:
    """Yield the documents of a data source; raise ChatsmithError for anything unusable."""
    spec_s = str(spec)
    if spec_s.startswith("hf:"):
        yield from _field_of(stream_hf(spec_s, "roneneldan/TinyStories"), field, spec_s)
        return
    count = 0
    for path in _files_of(Path(spec_s)):
        builder = SUFFIX_BUILDER.get(path.suffix, "text")
        if builder == "text":
            docs = _text_documents(path)
        elif path.suffix == ".jsonl":
            docs = _jsonl_documents(path, field)
        else:
            if builder == "json":  # a .json file may be one document: check it before parsing
                _check_readable_text(path)
            docs = _records(builder, [str(path)], field)
        for doc in docs:
            count += 1
            yield doc
    if count == 0:
        raise ChatsmithError(f"{spec_s} contains no text")

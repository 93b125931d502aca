"""Read text documents from what a user points at: a file, a folder, JSONL, Parquet or `hf:NAME`.

Plain text files are read directly (documents are separated by blank lines). JSONL, Parquet and
Hugging Face datasets go through the `datasets` library's streaming loaders, so a local file
and a hub dataset take the same path; only the name passed to `load_dataset` differs.
"""

from __future__ import annotations

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


def _check_readable_text(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read()
    except OSError as e:
        raise ChatsmithError(f"cannot read {path}: {e.strerror}") from None
    if not head.strip():
        raise ChatsmithError(f"data file {path} is empty")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ChatsmithError(
            f"{path} is not UTF-8 text (bad byte at offset {e.start}); convert it, e.g. with iconv"
        ) from None


def _text_documents(path: Path) -> Iterator[str]:
    """A plain text file: documents are separated by blank lines."""
    _check_readable_text(path)
    text = path.read_text(encoding="utf-8")
    for doc in text.split("\n\n"):
        if doc.strip():
            yield doc.strip("\n")


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


def _field_of(stream, field: str, where: str) -> Iterator[str]:
    for i, row in enumerate(stream):
        if field not in row:
            raise ChatsmithError(f"{where}: record {i + 1} has no '{field}' field")
        value = row[field]
        if not isinstance(value, str):
            raise ChatsmithError(f"{where}: record {i + 1} field '{field}' is not text")
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
        else:
            if builder == "json":
                _check_readable_text(path)
            docs = _records(builder, [str(path)], field)
        for doc in docs:
            count += 1
            yield doc
    if count == 0:
        raise ChatsmithError(f"{spec_s} contains no text")

"""Chat data for SFT: conversations as OpenAI message lists, from the built-in corpus or files.

A source is one of

    builtin:chitchat     the built-in conversations (the default; fixed held-out split)
    FILE.jsonl           one {"messages": [{"role": ..., "content": ...}, ...]} object a line
    FOLDER               every .jsonl file under it, in name order
    hf:NAME[:split]      a Hugging Face dataset with a `messages` column, streamed

Every record is checked with the chat template's `validate_messages`, and a bad one stops
loading with one line naming the file and line (or record) number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from chatsmith.chat_template import validate_messages
from chatsmith.data import chitchat
from chatsmith.data.sources import stream_hf, utf8_lines
from chatsmith.data.splits import split_tail
from chatsmith.errors import ChatsmithError

CHAT_SUFFIXES = (".jsonl",)


def _jsonl_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CHAT_SUFFIXES)
        if not files:
            raise ChatsmithError(f"folder {path} holds no .jsonl chat files")
        return files
    if not path.exists():
        raise ChatsmithError(f"chat data {path} does not exist")
    if path.suffix not in CHAT_SUFFIXES:
        raise ChatsmithError(
            f'chat data {path} must be .jsonl with one {{"messages": [...]}} object per line'
        )
    return [path]


def _record_messages(record: object, where: str) -> list[dict]:
    if not isinstance(record, dict):
        raise ChatsmithError(f'{where}: expected a JSON object with a "messages" list')
    if "messages" not in record:
        raise ChatsmithError(f'{where}: no "messages" field')
    return validate_messages(record["messages"], where=where, need_assistant=True)


def _jsonl_conversations(path: Path) -> Iterator[list[dict]]:
    for n, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatsmithError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        yield _record_messages(record, where)


def _hf_conversations(spec: str) -> Iterator[list[dict]]:
    for i, row in enumerate(stream_hf(spec, "HuggingFaceH4/no_robots")):
        yield _record_messages(row, f"{spec} record {i + 1}")


def iter_conversations(spec: str | Path) -> Iterator[list[dict]]:
    """Yield the validated conversations of a chat data source (not the built-in one)."""
    spec_s = str(spec)
    if spec_s.startswith("hf:"):
        yield from _hf_conversations(spec_s)
        return
    for path in _jsonl_files(Path(spec_s)):
        yield from _jsonl_conversations(path)


def load_conversations(
    spec: str | Path | None, max_conversations: int | None = None
) -> list[list[dict]]:
    """All conversations of a source (at most `max_conversations`); an empty source is an error."""
    out: list[list[dict]] = []
    for conv in iter_conversations(spec):
        out.append(conv)
        if max_conversations is not None and len(out) >= max_conversations:
            break
    if not out:
        raise ChatsmithError(f"{spec} contains no conversations")
    return out


def train_val_conversations(
    data: str | None, val_data: str | None = None, max_conversations: int | None = None
) -> tuple[list[list[dict]], list[list[dict]]]:
    """Training and held-out conversations.

    The built-in corpus keeps its fixed split; a user's data gives its last 5% (at least one
    conversation) to held-out unless `val_data` names a separate source.
    """
    if data is None or data == chitchat.BUILTIN_NAME:
        train = chitchat.chat_conversations("train")
        val = load_conversations(val_data) if val_data else chitchat.chat_conversations("val")
        if max_conversations is not None:
            train = train[:max_conversations]
        return train, val
    train = load_conversations(data, max_conversations)
    if val_data:
        return train, load_conversations(val_data)
    if len(train) < 2:
        raise ChatsmithError(
            f"{data} has only {len(train)} conversation; need 2 or more to hold one out "
            "(or give --val-data)"
        )
    return split_tail(train)

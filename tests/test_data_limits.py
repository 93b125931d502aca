"""Data that would stall or swamp: huge files are read as streams, overlong runs without
whitespace cannot stall tokenizer training, and tokenizer training shows progress."""

from __future__ import annotations

import json
import os
import pty
import random
import string
import subprocess
import sys
import tracemalloc

import pytest

from chatsmith.data.sources import iter_documents
from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import MAX_TRAIN_RUN, Tokenizer, bounded_for_training


def _write(path, docs: list[str], tail: bytes) -> None:
    if path.suffix == ".jsonl":
        body = "".join(json.dumps({"text": d}) + "\n" for d in docs)
    else:
        body = "\n\n".join(docs) + "\n\n"
    path.write_bytes(body.encode() + tail)


@pytest.mark.parametrize("name", ["big.jsonl", "big.txt"])
def test_a_bad_byte_at_the_end_comes_after_the_first_records(tmp_path, name):
    path = tmp_path / name
    docs = [f"document number {i} " + "words " * 20 for i in range(2000)]
    _write(path, docs, b"caf\xe9\n")
    lines = path.read_bytes().count(b"\n")
    stream = iter_documents(path)
    assert next(stream) == docs[0]  # the first record arrives before the file is checked whole
    with pytest.raises(ChatsmithError, match=f"{name}:{lines}: not UTF-8"):
        for _ in stream:
            pass


@pytest.mark.parametrize("name", ["big.jsonl", "big.txt"])
def test_the_first_record_of_a_large_file_needs_little_memory(tmp_path, name):
    path = tmp_path / name
    docs = [f"record {i} " + "lorem ipsum " * 40 for i in range(20_000)]  # about 10 MB
    _write(path, docs, b"")
    assert path.stat().st_size > 9_000_000
    tracemalloc.start()
    try:
        first = next(iter_documents(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first == docs[0]
    assert peak < 1_000_000  # reading the whole file first would take over 10 MB


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": 3}\n')
    with pytest.raises(ChatsmithError, match=r"d.jsonl:3 field 'text' is not text"):
        list(iter_documents(path))
    path.write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(ChatsmithError, match=r"d.jsonl:2 has no 'text' field"):
        list(iter_documents(path))


def test_overlong_runs_are_cut_for_tokenizer_training_only():
    text = "short words " + "x" * (3 * MAX_TRAIN_RUN + 5) + " more\n" + "y" * MAX_TRAIN_RUN
    counts: dict[str, int] = {}
    pieces = list(bounded_for_training([text, "plain text"], counts))
    assert "".join(pieces[:-1]) == text and pieces[-1] == "plain text"  # nothing lost
    assert max(len(w) for p in pieces for w in p.split()) == MAX_TRAIN_RUN
    assert counts == {"cut": 1}  # a run of exactly MAX_TRAIN_RUN is left whole


def test_a_megabyte_without_whitespace_trains_and_round_trips():
    rng = random.Random(0)
    line = "".join(rng.choices(string.ascii_letters, k=1_000_000))
    notes: list[str] = []
    # uncut, this took minutes (superlinear in the run's length); cut, a few seconds
    tok = Tokenizer.train(["some ordinary text here"] * 20 + [line], 400, notify=notes.append)
    assert len(notes) == 1 and "cut into" in notes[0] and "tokenizer training" in notes[0]
    assert tok.decode(tok.encode(line[:20_000])) == line[:20_000]


def test_tokenizer_training_shows_progress_in_a_terminal():
    code = (
        "from chatsmith.tokenizer import Tokenizer\n"
        "Tokenizer.train(['hello world, how are you'] * 200, 300, progress=True)\n"
    )
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=slave, env=os.environ
    )
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    assert b"Compute merges" in out

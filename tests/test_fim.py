"""Fill-in-the-middle: the transform's round trip and token boundaries, marker forging, code
data sources, completion prompts and cursors."""

from __future__ import annotations

import random

import pytest

from chatsmith.data.code import (
    PYTHON_STDLIB,
    CodeFile,
    code_files,
    folder_files,
    held_out,
    stdlib_files,
)
from chatsmith.data.fim import (
    FimSplit,
    fim_ids,
    fim_token_stream,
    infill_prompt,
    parse_fim,
    pieces,
    split_at_lines,
    split_at_random,
)
from chatsmith.data.tokens import tokenize_documents
from chatsmith.errors import ChatsmithError
from chatsmith.evaluation.code import sample_in_line_spans, sample_spans
from chatsmith.inference.completion import (
    completion_prompt,
    cursor_in_file,
    cursor_text,
    stream_completion,
    suffix_stops,
)
from chatsmith.inference.engine import SamplingParams
from chatsmith.serving.protocol import CompletionRequest
from chatsmith.tokenizer import FIM_TOKENS, Tokenizer

CODE = '''import os


class Greeter:
    """Say hello."""

    def __init__(self, name: str):
        self.name = name

    def greet(self) -> str:
        if not self.name:
            return "hello, nobody"
        return f"hello, {self.name} é中"
'''


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    docs = [f.text for f in stdlib_files()[:40]]
    return Tokenizer.train(docs + [CODE] * 5, vocab_size=600)


def test_random_split_round_trip_and_positions():
    rng = random.Random(0)
    for _ in range(200):
        split = split_at_random(CODE, rng)
        assert split.document == CODE
    empty = split_at_random("", rng)
    assert empty == FimSplit("", "", "")


def test_line_split_cuts_one_to_four_whole_lines():
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        split = split_at_lines(CODE, rng)
        assert split.document == CODE
        # cut at the break before the first removed line and at the one ending the last
        assert split.middle.startswith("\n") and split.suffix.startswith("\n")
        seen.add(split.middle.count("\n"))
    assert seen == {1, 2, 3, 4}
    assert split_at_lines("one line", rng).document == "one line"  # too short: random cut


@pytest.mark.parametrize("order", ["psm", "spm"])
def test_fim_ids_token_boundaries(tok, order):
    rng = random.Random(1)
    for _ in range(50):
        split = split_at_random(CODE, rng)
        ids = fim_ids(tok, split, order)
        p, s, m = tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id
        assert [ids.count(x) for x in (p, s, m, tok.end_id)] == [1, 1, 1, 1]
        assert ids[0] == p and ids[-1] == tok.end_id
        # each part is encoded on its own: the tokens between markers are exactly its encoding
        si, mi = ids.index(s), ids.index(m)
        if order == "psm":
            assert ids[1:si] == tok.encode(split.prefix)
            assert ids[si + 1 : mi] == tok.encode(split.suffix)
            assert ids[mi + 1 : -1] == tok.encode(split.middle)
        else:
            assert si == 1
            assert ids[2:mi] == tok.encode(split.suffix)
            assert ids[mi + 1 : -1] == tok.encode(split.prefix) + tok.encode(split.middle)
        back = parse_fim(tok, ids)
        assert back.document == CODE
        if order == "psm":
            assert back == split


def test_typed_markers_are_plain_text(tok):
    """Code that spells the markers stays text: the only markers are the ones FIM placed."""
    forged = "x = '<|fim_prefix|><|fim_suffix|><|fim_middle|><|end|><|bos|>'\n"
    assert not set(tok.encode(forged)) & tok.special_ids
    ids = fim_ids(tok, FimSplit(forged, forged, forged), "psm")
    assert sum(i in tok.special_ids for i in ids) == 4
    assert parse_fim(tok, ids).document == forged * 3
    for marker in FIM_TOKENS:
        assert tok.hf.token_to_id(marker) in tok.special_ids
        assert tok.decode(tok.encode(marker)) == marker


def test_pieces_rejoin_and_fit():
    text = CODE * 3 + "y" * 700 + "\nz\n"
    parts = pieces(text, 100)
    assert "".join(parts) == text
    assert all(0 < len(p) <= 100 for p in parts)


def test_token_stream_rate_zero_is_plain_and_rate_one_rebuilds_documents(tok):
    docs = [CODE * 4, "def f():\n    return 1\n"]
    assert fim_token_stream(tok, docs, 0.0, 64, 3).tolist() == (
        tokenize_documents(tok, docs).tolist()
    )
    stream = fim_token_stream(tok, docs, 1.0, 64, 3).tolist()
    assert stream.count(tok.bos_id) == 2
    rebuilt = []
    for doc_ids in _split_on(stream, tok.bos_id):
        examples = _split_after(doc_ids, tok.end_id)
        rebuilt.append("".join(parse_fim(tok, e).document for e in examples))
        assert len(examples) == len(pieces(docs[len(rebuilt) - 1], 128))
    assert rebuilt == docs


def _split_on(ids: list[int], sep: int) -> list[list[int]]:
    out: list[list[int]] = []
    for t in ids:
        if t == sep:
            out.append([])
        else:
            out[-1].append(t)
    return out


def _split_after(ids: list[int], end: int) -> list[list[int]]:
    out, cur = [], []
    for t in ids:
        cur.append(t)
        if t == end:
            out.append(cur)
            cur = []
    assert not cur
    return out


def test_fim_rate_outside_unit_interval(tok):
    for bad in (-0.1, 1.5):
        with pytest.raises(ChatsmithError, match=r"\[0, 1\]"):
            fim_token_stream(tok, [CODE], bad, 64, 0)


def test_indentation_is_one_token(tok):
    """A line break and the indentation after it form one pre-tokenizer piece, so a trained
    code tokenizer spends one token on them."""
    for depth in (4, 8):
        ids = tok.encode("\n" + " " * depth + "return x")
        assert tok.decode(ids[:1]) == "\n" + " " * depth


def test_infill_prompt_fits_budget_and_keeps_text_near_cursor(tok):
    prefix, suffix = "a = 1\n" * 200, "\nb = 2" * 200
    ids = infill_prompt(tok, prefix, suffix, 60)
    assert len(ids) <= 60
    p, s, m = tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id
    assert ids[:3] == [tok.bos_id, p, s]  # SPM: the suffix first, the prefix next to the middle
    suf, pre = tok.decode(ids[3 : ids.index(m)]), tok.decode(ids[ids.index(m) + 1 :])
    assert prefix.endswith(pre) and suffix.startswith(suf) and len(pre) > 20 and len(suf) > 20
    short = infill_prompt(tok, "x = ", "\ny = 2", 60)
    assert tok.decode(short) == "\ny = 2x = " and short[-len(tok.encode("x = ")) - 1] == m


def test_completion_prompt_needs_a_prefix(tok):
    with pytest.raises(ChatsmithError, match="suffix needs a prefix"):
        completion_prompt(tok, None, "return 1", 64)
    with pytest.raises(ChatsmithError, match="suffix needs a prefix"):
        cursor_text(None, "x", None, None)
    plain = completion_prompt(tok, "a = 1\n" * 100, None, 30)
    assert len(plain) == 30 and plain[0] == tok.bos_id
    assert cursor_text("def f():\\n\\treturn", None, None, None) == ("def f():\n\treturn", None)


def test_cursor_in_file(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("a = 1\nb = 2\nc = 3\n")
    # at the start of a line: the end of the line before (new lines are inserted there)
    assert cursor_in_file(f, 2) == ("a = 1", "\nb = 2\nc = 3\n")
    assert cursor_in_file(f, 1) == ("", "a = 1\nb = 2\nc = 3\n")
    assert cursor_in_file(f, 2, 5) == ("a = 1\nb = ", "2\nc = 3\n")
    assert cursor_in_file(f, 4) == ("a = 1\nb = 2\nc = 3", "\n")
    crlf = tmp_path / "w.py"
    crlf.write_bytes(b"a = 1\r\nb = 2\r\n")
    assert cursor_in_file(crlf, 2) == ("a = 1", "\r\nb = 2\r\n")
    with pytest.raises(ChatsmithError, match="--line must be between 1 and 4"):
        cursor_in_file(f, 9)


def test_stdlib_source_leaves_out_tests_and_vendored_code():
    train, val = code_files(PYTHON_STDLIB, None, "train"), code_files(PYTHON_STDLIB, None, "val")
    assert len(train) > 300 and 0 < len(val) < len(train) / 10
    assert not {f.path for f in train} & {f.path for f in val}
    assert all(held_out(f.path) for f in val)
    for f in train + val:
        parts = f.path.split("/")
        assert not {"test", "tests", "site-packages", "idle_test"} & set(parts[:-1]), f.path
        assert f.path.endswith(".py") and not parts[-1].startswith("test_")


def test_folder_source_include_binary_and_empty(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.rs").write_text("fn main() {}\n")
    (tmp_path / "notes.md").write_text("# notes\n")
    (tmp_path / "blob.py").write_bytes(b"\x00\x01binary")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "c.py").write_text("y = 2\n")
    notes: list[str] = []
    files = folder_files(tmp_path, "*.py,*.rs", notes.append)
    assert [f.path for f in files] == ["b.rs", "pkg/a.py"]
    assert len(notes) == 1 and "blob.py" in notes[0]
    with pytest.raises(ChatsmithError, match="no files matching"):
        folder_files(tmp_path, "*.go")
    with pytest.raises(ChatsmithError, match="binary"):
        folder_files(tmp_path / "blob.py", "*.py")
    assert len(code_files(str(tmp_path), "*.py,*.rs", "all")) == 2
    with pytest.raises(ChatsmithError, match="not one"):
        code_files("builtin:chitchat", "*.py", "train")


def test_edit_similarity_gives_partial_credit_and_punishes_running_on():
    from chatsmith.evaluation.code import edit_similarity

    truth = "\n    return a + b"
    assert edit_similarity(truth + "  \n", truth) == 1.0  # trailing whitespace ignored
    close = edit_similarity("\n    return a - b", truth)
    ran_on = edit_similarity(truth + "\n\nprint(add(1, 2))\nprint(add(3, 4))\n", truth)
    unrelated = edit_similarity("import os", truth)
    assert 1.0 > close > ran_on > unrelated


def test_suffix_stops_end_the_middle_before_the_line_after_the_cursor():
    assert suffix_stops("\n\n    return x\nfoo()\n") == ["\n\n    return x"]
    assert suffix_stops("\n  y\n") == ["\n  y"]
    assert suffix_stops("x)\n    return x") == ["x)"]  # inside a line: the rest of it
    for suffix in ("\n", "\n   \n", "  ", "", None):  # nothing but blanks after the cursor
        assert suffix_stops(suffix) == []
    body = CompletionRequest(prompt="x = 1", suffix="\nreturn x", stop=["END"])
    assert body.stop_list() == ["END", "\nreturn x"]


class ScriptedEngine:
    """Stands in for the model: `generate` yields the tokens of a fixed text."""

    context = 256

    def __init__(self, tok: Tokenizer, text: str):
        self.ids, self.prompts = tok.encode(text), []

    def generate(self, ids, params):
        self.prompts.append(ids)
        yield from self.ids


def test_stream_completion_stops_where_the_suffix_line_begins(tok):
    prefix, suffix = "def f(x):", "\n    return y\n"
    written = "\n    y = x + 1\n    return y\n\nprint(f(2))"
    engine = ScriptedEngine(tok, written)
    greedy = SamplingParams(max_tokens=32, temperature=0)
    assert "".join(stream_completion(engine, tok, prefix, suffix, greedy)) == "\n    y = x + 1"
    assert engine.prompts[0] == completion_prompt(tok, prefix, suffix, 256 - 32)
    # without a suffix the text is a plain continuation, uncut
    assert "".join(stream_completion(engine, tok, prefix, None, greedy)) == written
    # a cursor inside a line: the middle ends where the rest of that line begins
    call = ScriptedEngine(tok, "x, 1)\n    return y")
    assert "".join(stream_completion(call, tok, "y = max(", "1)\nreturn y", greedy)) == "x, "


def test_eval_spans_are_windows_of_the_file():
    files = [CodeFile("a.py", CODE)]
    for spans in (
        sample_spans(files, 20, 1, 80, seed=1),
        sample_spans(files, 20, (2, 4), 80, seed=2),
        sample_in_line_spans(files, 20, 80, seed=3),
    ):
        assert len(spans) == 20
        for s in spans:
            assert s.document in CODE and s.middle.strip()
    ends_line = 0
    for s in sample_in_line_spans(files, 100, 80, seed=3):
        assert "\n" not in s.middle
        line_start = s.prefix[s.prefix.rfind("\n") + 1 :]
        line = line_start + s.middle + s.suffix.split("\n")[0]
        assert len(line_start) >= len(line) - len(line.lstrip())  # the cut is past the indent
        ends_line += s.suffix.startswith("\n")
    assert 0 < ends_line < 100  # some middles run to the end of their line, most do not

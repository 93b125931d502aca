"""Code models through the command line: pretrain on a folder of code with --fim, complete at a
cursor, eval --code, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from test_cli import assert_clean_error

from chatsmith.data.code import held_out, stdlib_files
from chatsmith.data.fim import infill_prompt
from chatsmith.inference.completion import stream_completion, suffix_stops
from chatsmith.inference.engine import SamplingParams
from chatsmith.inference.loading import load_run
from chatsmith.inference.streaming import cut_at_stops

TINY = ["--preset", "tiny", "--vocab-size", "400", "--seq-len", "64", "--batch-size", "4"]
TINY += ["--max-steps", "3", "--eval-every", "100", "--device", "cpu"]


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory) -> Path:
    """Thirty small real Python files (three of them in the held-out split), plus a file
    --include must leave out."""
    root = tmp_path_factory.mktemp("code")
    small = [f for f in stdlib_files() if len(f.text) < 6000]
    small = [f for f in small if not held_out(f.path)][:27] + [
        f for f in small if held_out(f.path)
    ][:3]
    for f in small:
        path = root / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.text)
    (root / "README.md").write_text("not code\n")
    return root


@pytest.fixture(scope="module")
def code_run(code_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "code"
    proc = run_cli(
        "pretrain", "--data", str(code_dir), "--include", "*.py", "--fim", "0.5",
        "--out", str(out), *TINY,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "fill-in-the-middle: 50%" in proc.stderr
    return out


@pytest.mark.slow
def test_complete_streams_the_middle_through_the_engine(code_run, tmp_path):
    prefix, suffix = "def add(a, b):\n", "\n\nprint(add(1, 2))\n"
    proc = run_cli(
        "complete", str(code_run), "--prefix", "def add(a, b):\\n",
        "--suffix", "\\n\\nprint(add(1, 2))\\n", "--temperature", "0", "--max-tokens", "12",
        "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    loaded = load_run(code_run, "cpu")
    tok, engine = loaded.tokenizer, loaded.engine()
    greedy = SamplingParams(max_tokens=12, temperature=0)
    written = tok.decode(engine.generate(infill_prompt(tok, prefix, suffix, 52), greedy))
    expected = cut_at_stops(written, suffix_stops(suffix))
    assert "".join(stream_completion(engine, tok, prefix, suffix, greedy)) == expected
    assert proc.stdout == expected + "\n"

    src = tmp_path / "m.py"
    src.write_text(prefix + suffix)
    at_line = run_cli(
        "complete", str(code_run), "--file", str(src), "--line", "2", "--temperature", "0",
        "--max-tokens", "12", "--device", "cpu",
    )  # fmt: skip
    assert at_line.returncode == 0, at_line.stderr
    # line 2's cursor is the end of line 1: the same infill with the break moved to the suffix
    moved = "".join(stream_completion(engine, tok, prefix[:-1], "\n" + suffix, greedy))
    assert at_line.stdout == moved + "\n"


@pytest.mark.slow
def test_eval_code_json(code_run):
    proc = run_cli("eval", str(code_run), "--code", "--samples", "5", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["samples"] == 5 and figures["files"] >= 1
    assert figures["bpb"] > 0 and figures["bytes"] > 0
    for k in (
        "infill_single_line_em",
        "infill_multi_line_em",
        "left_to_right_single_line_em",
        "left_to_right_multi_line_em",
        "infill_in_line_em",
        "left_to_right_in_line_em",
        "next_line_em",
    ):
        assert figures[k] in {i / 5 for i in range(6)}
    # an untrained-ish model: each middle costs bits, more than zero and less than raw bytes
    for k in ("middle_bpb_with_suffix", "middle_bpb_prefix_only"):
        assert 0 < figures[k] < 16
    for k in ("infill_single_line_es", "infill_multi_line_es"):
        assert 0 <= figures[k] <= 1
        # exact matches score 1, so the mean similarity is at least the exact-match share
        assert figures[k] >= figures[k.replace("_es", "_em")]


@pytest.mark.slow
def test_code_model_refuses_to_chat(code_run):
    proc = run_cli("chat", str(code_run), "--prompt", "hello", "--device", "cpu")
    assert_clean_error(proc, "code model", "chatsmith complete")


def test_bad_code_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("text\n")
    assert_clean_error(
        run_cli(
            "pretrain", "--data", str(empty), "--include", "*.py", "--out", str(tmp_path / "r")
        ),
        "no files matching",
    )
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "x.py").write_bytes(b"\x89PNG\x00\x00")
    assert_clean_error(
        run_cli(
            "pretrain", "--data", str(binary), "--include", "*.py", "--out", str(tmp_path / "s")
        ),
        "binary",
    )
    assert_clean_error(
        run_cli("pretrain", "--fim", "1.5", "--out", str(tmp_path / "t"), *TINY), "[0, 1]"
    )
    assert_clean_error(
        run_cli("complete", str(tmp_path / "none"), "--suffix", "return 1"), "suffix needs a prefix"
    )

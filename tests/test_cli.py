"""The command line as a user runs it: real subprocesses, figures on stdout, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from chatsmith.checkpoint import latest_checkpoint_dir
from chatsmith.inference.engine import SamplingParams
from chatsmith.inference.loading import load_run

TINY = [
    "--preset",
    "tiny",
    "--vocab-size",
    "300",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--max-steps",
    "3",
    "--eval-every",
    "100",
    "--device",
    "cpu",
]


def assert_clean_error(proc, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr
    for f in fragments:
        assert f in last, last


def test_pretrain_json_then_generate_and_eval(corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "pretrain",
        "--data",
        str(corpus["train"]),
        "--val-data",
        str(corpus["val"]),
        "--out",
        str(out),
        "--json",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["step"] == 3 and figures["final_eval"]["val_bpb"] > 0
    assert "parameters" in proc.stderr and "FLOPs" in proc.stderr  # the model card

    gen = run_cli(
        "generate",
        str(out),
        "--prompt",
        "Hello there",
        "--max-tokens",
        "12",
        "--seed",
        "3",
        "--device",
        "cpu",
    )
    assert gen.returncode == 0, gen.stderr
    # stdout is the prompt, then exactly the seeded continuation the engine samples
    loaded = load_run(out, "cpu")
    tok = loaded.tokenizer
    params = SamplingParams(max_tokens=12, temperature=0.8, top_k=50, top_p=0.95, seed=3)
    reply = loaded.engine().generate([tok.bos_id, *tok.encode("Hello there")], params)
    continuation = tok.decode(list(reply))
    assert continuation and gen.stdout == "Hello there" + continuation + "\n"
    again = run_cli(
        "generate",
        str(out),
        "--prompt",
        "Hello there",
        "--max-tokens",
        "12",
        "--seed",
        "3",
        "--device",
        "cpu",
    )
    assert again.stdout == gen.stdout  # seeded sampling is reproducible

    ev = run_cli("eval", str(out), "--data", str(corpus["val"]), "--json", "--device", "cpu")
    assert ev.returncode == 0, ev.stderr
    score = json.loads(ev.stdout)
    assert set(score) == {"loss", "bpb", "tokens", "bytes"} and score["bytes"] > score["tokens"]


def test_resume_continues_where_it_stopped(corpus, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(corpus["train"]), "--val-data", str(corpus["val"]), *TINY]
    assert run_cli("pretrain", "--out", str(out), *args).returncode == 0
    proc = run_cli("pretrain", "--resume", str(out), "--max-steps", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 5


def test_generate_with_a_prompt_longer_than_the_context(tiny_run):
    proc = run_cli(
        "generate", str(tiny_run), "--prompt", "word " * 400, "--max-tokens", "5", "--device", "cpu"
    )
    assert proc.returncode == 0, proc.stderr
    assert "keeping its last" in proc.stderr


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda d: str(d / "missing.txt"), ["does not exist"]),
        (lambda d: write(d / "empty.txt", b""), ["is empty"]),
        (lambda d: write(d / "latin1.txt", "café crème".encode("latin-1")), ["not UTF-8"]),
        (lambda d: "/proc/self/mem", ["cannot read"]),
        (lambda d: write(d / "bad.jsonl", b'{"title": "no text field"}\n'), ["no 'text' field"]),
        (lambda d: str(d), ["holds no data files"]),
    ],
    ids=["missing", "empty", "non-utf8", "unreadable", "jsonl-no-text", "empty-folder"],
)
def test_bad_data_is_a_one_line_error(tmp_path, make, fragments):
    folder = tmp_path / "data"
    folder.mkdir()
    proc = run_cli("pretrain", "--data", make(folder), "--out", str(tmp_path / "r"), *TINY)
    assert_clean_error(proc, *fragments)


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--preset", "enormous"], ["unknown preset"]),
        (["--depth", "3", "--n-kv-head", "2"], ["n_kv_head 2 must divide n_head 3"]),
        (["--seq-len", "100000"], ["fewer than one training sequence"]),
        (["--device", "cuda"], ["CUDA is not available"]),
    ],
    ids=["preset", "heads", "seq-len", "device"],
)
def test_impossible_settings_are_one_line_errors(corpus, tmp_path, extra, fragments):
    proc = run_cli(
        "pretrain", "--data", str(corpus["val"]), "--out", str(tmp_path / "r"), *TINY, *extra
    )
    assert_clean_error(proc, *fragments)


def test_corrupt_checkpoint_and_missing_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = latest_checkpoint_dir(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    assert_clean_error(run_cli("generate", str(run), "--prompt", "hi"), "corrupt or truncated")
    assert_clean_error(run_cli("eval", str(tmp_path / "nope")), "not a chatsmith run")


def test_out_folder_with_a_run_is_not_overwritten(tiny_run):
    proc = run_cli("pretrain", "--out", str(tiny_run), *TINY)
    assert_clean_error(proc, "already holds a run")

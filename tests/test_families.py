"""The encoder and the encoder-decoder from the command line: train, evaluate, embed, generate,
chat, and the one-line errors for using a run of one family as another."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from chatsmith.inference.embeddings import embed_texts
from chatsmith.inference.loading import load_run


def reverse_pairs(path: Path, n: int = 240) -> Path:
    """A user task: reverse a short list of words."""
    words = "red green blue cat dog sun moon tree fish bird".split()
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(n):
        k = int(torch.randint(2, 5, (1,), generator=g))
        picked = [words[int(i)] for i in torch.randint(0, len(words), (k,), generator=g)]
        lines.append(json.dumps({"source": " ".join(picked), "target": " ".join(picked[::-1])}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_encoder_run_eval_reports_masked_figures(encoder_run, corpus):
    r = run_cli("eval", str(encoder_run), "--data", str(corpus["val"]), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["tokens"] > 100
    assert 0 < figures["masked_accuracy"] < 1
    # better than guessing uniformly over the vocabulary after 40 steps
    assert figures["masked_loss"] < torch.log(torch.tensor(512.0)).item()


def test_embed_cli_prints_unit_vectors_in_input_order(encoder_run, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("how are you doing today?\n\nI like my dog\n")
    r = run_cli(
        "embed",
        str(encoder_run),
        "--text",
        "hello there",
        "--file",
        str(lines),
        "--json",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    texts = [row["text"] for row in out["data"]]
    assert texts == ["hello there", "how are you doing today?", "I like my dog"]
    vectors = torch.tensor([row["embedding"] for row in out["data"]])
    assert vectors.shape == (3, out["dimensions"])
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the same text alone, in a batch of one, gives the same vector as in the batch
    alone, _ = embed_texts(load_run(encoder_run, "cpu"), ["I like my dog"])
    assert torch.allclose(alone[0], vectors[2], atol=1e-5)


def test_embedding_batches_do_not_leak_padding(encoder_run):
    run = load_run(encoder_run, "cpu")
    texts = ["a", "a much longer sentence that pads the short one a lot in its batch", "b c"]
    together, _ = embed_texts(run, texts, batch_size=3)
    for i, t in enumerate(texts):
        alone, _ = embed_texts(run, [t])
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_family_mismatches_are_one_line_errors(encoder_run, tiny_run, tmp_path):
    r = run_cli("embed", str(tiny_run), "--text", "hi", "--device", "cpu")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    assert "decoder run" in r.stderr
    r = run_cli("chat", str(encoder_run), "--prompt", "hi", "--device", "cpu")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    assert "encoder run" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"source": "a", "target": "b"}\n{"source": "only a source"}\n')
    r = run_cli(
        "pretrain",
        "--arch",
        "encoder_decoder",
        "--task",
        str(bad),
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert errors == [f"error: {bad}:2: missing field 'target'"]


@pytest.mark.slow
def test_encoder_decoder_from_the_command_line(tmp_path):
    """Train on a user task, then generate, chat and evaluate through the shared engine."""
    task = reverse_pairs(tmp_path / "reverse.jsonl")
    run = tmp_path / "encdec"
    r = run_cli(
        "pretrain",
        "--arch",
        "encoder_decoder",
        "--task",
        str(task),
        "--preset",
        "tiny",
        "--vocab-size",
        "300",
        "--seq-len",
        "32",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--max-steps",
        "150",
        "--eval-every",
        "50",
        "--out",
        str(run),
        "--device",
        "cpu",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["final_eval"]["val_loss"] < 1.0
    r = run_cli("eval", str(run), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    score = json.loads(r.stdout)
    assert score["task"] == "reverse" and score["n"] == 24
    assert score["accuracy"] > 0.3  # a 150-step tiny model reverses some lists exactly
    r = run_cli(
        "generate", str(run), "--prompt", "cat dog sun", "--temperature", "0", "--device", "cpu"
    )
    assert r.returncode == 0, r.stderr
    reply = r.stdout.strip()
    assert "cat dog sun" not in reply and set(reply.split()) <= set(
        "red green blue cat dog sun moon tree fish bird".split()
    )
    r = run_cli(
        "chat", str(run), "--prompt", "cat dog sun", "--temperature", "0", "--device", "cpu"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == reply  # chat and generate share the engine and the source


def test_encoder_run_resumes_where_it_stopped(corpus, tmp_path):
    from conftest import tiny_args, tiny_flags

    from chatsmith.checkpoint import read_run_info
    from chatsmith.reporting import Reporter
    from chatsmith.training.metrics import read_metrics
    from chatsmith.training.pretrain import pretrain

    config = tiny_args(corpus, arch="encoder", eval_every=5, save_every=5)
    first = pretrain(config, tiny_flags(tmp_path, 5), Reporter(quiet=True))
    assert first.step == 5
    resumed = pretrain(config, tiny_flags(tmp_path, 8, resume=True), Reporter(quiet=True))
    assert resumed.step == 8 and resumed.tokens == first.tokens * 8 // 5
    assert read_run_info(tmp_path)["model"]["arch"] == "encoder"
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "val_accuracy" in r]
    assert steps == [5, 8]  # the first leg's final evaluation, then the resumed run's

"""Token shards: same tokens as the in-memory path, exact resume, clear errors, the sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from chatsmith.data.batching import permuted_index
from chatsmith.data.shards import (
    INDEX_FILE,
    _is_val,
    open_shards,
    token_dtype,
    write_shards,
)
from chatsmith.data.sources import iter_documents
from chatsmith.data.tokens import TokenWindows, tokenize_documents
from chatsmith.errors import ChatsmithError
from chatsmith.reporting import Reporter
from chatsmith.tokenizer import Tokenizer

SHARE = 0.05
QUIET = Reporter(quiet=True)


@pytest.fixture(scope="module")
def docs(corpus) -> list[str]:
    return list(iter_documents(corpus["train"]))


@pytest.fixture(scope="module")
def tok_file(docs, tmp_path_factory):
    return Tokenizer.train(docs, 400).save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def shards(docs, tok_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "s"
    write_shards(docs, tok_file, out, shard_tokens=5000, val_share=SHARE, workers=2)
    return out


def test_shards_hold_the_same_tokens_as_tokenizing_in_memory(docs, tok_file, shards):
    tok = Tokenizer.load(tok_file)
    train_docs = [d for i, d in enumerate(docs) if not _is_val(i, SHARE)]
    val_docs = [d for i, d in enumerate(docs) if _is_val(i, SHARE)]
    assert 0 < len(val_docs) < len(docs) * SHARE + 1
    s = open_shards(shards)
    arrays = s.train()
    assert len(arrays) > 3 and all(len(a) == 5000 for a in arrays[:-1])
    assert s.index["dtype"] == "uint16" and arrays[0].dtype == np.uint16
    assert np.array_equal(np.concatenate(arrays), tokenize_documents(tok, train_docs).numpy())
    assert np.array_equal(s.val(), tokenize_documents(tok, val_docs).numpy())


def test_interrupted_tokenizing_resumes_at_the_last_complete_shard(
    docs, tok_file, shards, tmp_path, monkeypatch
):
    from chatsmith.data import shards as shards_mod

    monkeypatch.setattr(shards_mod, "DOC_BATCH", 16)  # several batches per run, not one
    out = tmp_path / "s"

    def stop_midway(progress):
        if progress.tokens > 12_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(docs, tok_file, out, 5000, SHARE, workers=1, on_progress=stop_midway)
    index = json.loads((out / INDEX_FILE).read_text())
    total = len(open_shards(shards).index["train"])
    assert not index["complete"] and 0 < len(index["train"]) < total - 2
    with pytest.raises(ChatsmithError, match="did not finish"):
        open_shards(out)
    write_shards(docs, tok_file, out, 5000, SHARE, workers=2)
    for name in [e["file"] for e in open_shards(shards).index["train"]] + ["val.bin"]:
        assert (out / name).read_bytes() == (shards / name).read_bytes(), name


def test_a_truncated_shard_is_a_clear_error(shards, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(shards, copy)
    victim = copy / "train_000001.bin"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(ChatsmithError, match="train_000001.bin is truncated"):
        open_shards(copy)


def test_shards_of_another_tokenizer_are_refused(shards, docs, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(shards, copy)
    Tokenizer.train(docs[:50], 300).save(copy)  # a different tokenizer.json beside the index
    with pytest.raises(ChatsmithError, match="does not match tokenizer.json"):
        open_shards(copy)
    with pytest.raises(ChatsmithError, match="another tokenizer than this run's"):
        open_shards(shards, tokenizer_sha256="0" * 64)


def test_a_vocabulary_too_large_for_uint16_is_refused(shards, tmp_path):
    import shutil

    assert token_dtype(65_536) == np.uint16 and token_dtype(65_537) == np.uint32
    with pytest.raises(ChatsmithError, match="does not fit uint16"):
        token_dtype(70_000, "uint16")
    copy = tmp_path / "s"
    shutil.copytree(shards, copy)
    index = json.loads((copy / INDEX_FILE).read_text())
    index["vocab_size"] = 70_000  # an index claiming uint16 ids for a 70k vocabulary
    (copy / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ChatsmithError, match="does not fit uint16"):
        open_shards(copy)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 4097])
def test_window_order_is_a_permutation(n):
    order = [permuted_index(i, n, key=12345) for i in range(n)]
    assert sorted(order) == list(range(n))
    if n > 64:
        assert order != list(range(n))
        assert order != [permuted_index(i, n, key=999) for i in range(n)]


def test_ranks_read_slices_of_the_one_process_batch_and_resume_exactly(shards):
    arrays = open_shards(shards).train()
    one = TokenWindows(arrays, 32, 8, seed=3)
    halves = [TokenWindows(arrays, 32, 8, seed=3, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        x, y = one.next_batch()
        parts = [h.next_batch() for h in halves]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))
    resumed = TokenWindows(arrays, 32, 8, seed=3)
    resumed.load_state_dict(halves[0].state_dict())  # a different number of processes
    assert torch.equal(resumed.next_batch()[0], one.next_batch()[0])
    with pytest.raises(ChatsmithError, match="divisible by 3"):
        TokenWindows(arrays, 32, 8, seed=3, world=3)


def test_tokenize_command(corpus, tok_file, tmp_path):
    out = tmp_path / "s"
    r = run_cli("tokenize", str(corpus["train"]), "--tokenizer", str(tok_file), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "training shards" in r.stdout and "docs" in r.stderr  # the progress bar
    assert open_shards(out).train_tokens > 10_000
    r = run_cli("tokenize", str(corpus["train"]), "--tokenizer", str(tmp_path / "no"), "--out", "x")
    assert r.returncode == 1 and r.stderr.startswith("error: no tokenizer at")


def test_shards_and_text_train_to_identical_weights(corpus, docs, tmp_path, one_thread):
    from conftest import tiny_args, tiny_flags
    from safetensors.torch import load_file

    from chatsmith.checkpoint import latest_checkpoint_dir
    from chatsmith.training.pretrain import pretrain

    share = 0.004  # one document in 250 held out
    text = tmp_path / "train.txt"
    text.write_text("\n\n".join(d for i, d in enumerate(docs) if not _is_val(i, share)))
    runs = {"text": tmp_path / "text", "shards": tmp_path / "shards-run"}
    pretrain(tiny_args(corpus, data=str(text)), tiny_flags(runs["text"], 6), QUIET)
    shards = tmp_path / "shards"  # one shard: windows are the same as in one text tensor
    write_shards(docs, runs["text"] / "tokenizer.json", shards, 10**6, share, workers=1)
    pretrain(tiny_args(corpus, data=str(shards)), tiny_flags(runs["shards"], 6), QUIET)
    a, b = (load_file(str(latest_checkpoint_dir(r) / "model.safetensors")) for r in runs.values())
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

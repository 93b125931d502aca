"""Data sources (text, folders, JSONL, Parquet through `datasets`), windows, and training aids."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_args, tiny_flags

from chatsmith.data.sources import iter_documents
from chatsmith.data.tokens import TokenWindows
from chatsmith.errors import ChatsmithError
from chatsmith.reporting import Reporter
from chatsmith.training.metrics import OverfitWatch, read_metrics
from chatsmith.training.pretrain import pretrain

DOCS = ["first document\nwith two lines", "second one ✓", "third: 😀"]


def test_every_local_format_gives_the_same_documents(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "c.parquet")
    for name in ("a.txt", "b.jsonl", "c.parquet"):
        assert list(iter_documents(tmp_path / name)) == DOCS, name
    assert list(iter_documents(tmp_path)) == DOCS * 3  # a folder: its files in name order


def test_parquet_without_the_text_column(tmp_path):
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "c.parquet")
    with pytest.raises(ChatsmithError, match="no 'text' field"):
        list(iter_documents(tmp_path / "c.parquet"))


def test_malformed_jsonl(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ChatsmithError, match="cannot read"):
        list(iter_documents(tmp_path / "bad.jsonl"))


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ChatsmithError, match="cannot stream hf:"):
        list(iter_documents("hf:someone/not-here"))
    with pytest.raises(ChatsmithError, match="needs a dataset name"):
        list(iter_documents("hf:"))


def test_windows_cover_an_epoch_without_repeats_and_resume():
    tokens = torch.arange(1001, dtype=torch.int32)
    w = TokenWindows(tokens, seq_len=10, batch_size=4, seed=3)
    starts = []
    for _ in range(25):  # 100 windows = one epoch
        x, y = w.next_batch()
        assert (y == x + 1).all()  # targets are inputs shifted by one
        starts += x[:, 0].tolist()
    assert sorted(starts) == list(range(0, 1000, 10))
    again = TokenWindows(tokens, seq_len=10, batch_size=4, seed=3)
    again.load_state_dict({"position": 40})
    w.load_state_dict({"position": 40})
    assert torch.equal(again.next_batch()[0], w.next_batch()[0])


def test_overfit_watch():
    watch = OverfitWatch()
    assert watch.check(3.0, 3.1) is None
    assert watch.check(2.8, 3.0) is None  # both fell
    assert "overfitting" in watch.check(2.5, 3.2)  # held-out rose while training fell


def test_muon_optimizer_trains(corpus, tmp_path):
    out = tmp_path / "muon"
    pretrain(
        tiny_args(corpus, optimizer="muon", eval_every=15),
        tiny_flags(out, 30),
        Reporter(quiet=True),
    )
    evals = [r["val_loss"] for r in read_metrics(out / "metrics.jsonl") if "val_loss" in r]
    assert evals[-1] < evals[0]


def test_folder_of_text_trains(corpus, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    os.link(corpus["train"], folder / "part1.txt")
    out = tmp_path / "run"
    result = pretrain(
        tiny_args(corpus, data=str(folder), val_data=None), tiny_flags(out, 2), Reporter(quiet=True)
    )
    assert result.step == 2 and result.final_eval["val_tokens"] > 0

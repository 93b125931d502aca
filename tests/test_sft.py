"""SFT: chat data loading and its errors, example building, the training stage and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_flags

from chatsmith.chat_template import render
from chatsmith.checkpoint import latest_checkpoint_dir, load_checkpoint
from chatsmith.data import chitchat
from chatsmith.data.conversations import load_conversations, train_val_conversations
from chatsmith.errors import ChatsmithError
from chatsmith.inference.loading import load_run
from chatsmith.models import IGNORE_INDEX
from chatsmith.reporting import Reporter
from chatsmith.tokenizer import Tokenizer
from chatsmith.training.config import SFTConfig
from chatsmith.training.sft import SFT, build_examples, conversation_examples, sft


def write_jsonl(path: Path, conversations: list) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat")
    train = [c for c in chitchat.chat_conversations("train") if len(c) > 1][:300]
    val = [c for c in chitchat.chat_conversations("val") if len(c) > 1][:30]
    return {
        "train": write_jsonl(root / "train.jsonl", train),
        "val": write_jsonl(root / "val.jsonl", val),
    }


@pytest.fixture(scope="module")
def tok(tiny_run) -> Tokenizer:
    return Tokenizer.load(tiny_run)


def sft_args(base: Path, data: dict, **over) -> SFTConfig:
    args = dict(
        base_run=str(base),
        data=str(data["train"]),
        val_data=str(data["val"]),
        batch_size=8,
        lr=2e-3,
        warmup_steps=3,
        eval_every=1000,
        save_every=10,
    )
    args.update(over)
    return SFTConfig(**args)


GOOD = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


# ---- loading chat data and its errors -------------------------------------------------------


def test_jsonl_folder_and_held_out_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [GOOD] * 30)
    write_jsonl(folder / "b.jsonl", [GOOD] * 10)
    (folder / "notes.txt").write_text("ignored")
    assert len(load_conversations(folder)) == 40
    train, val = train_val_conversations(str(folder))
    assert len(train) == 38 and len(val) == 2


def test_builtin_split_is_the_fixed_one():
    train, val = train_val_conversations(None)
    assert len(val) == len(chitchat.chat_conversations("val"))
    assert train[0][0]["role"] == "user"


@pytest.mark.parametrize(
    "lines, fragment",
    [
        ([json.dumps({"messages": GOOD}), "{not json"], ":2: malformed JSON"),
        (
            [json.dumps({"messages": GOOD}), "", json.dumps({"msgs": GOOD})],
            ':3: no "messages" field',
        ),
        ([json.dumps([1, 2])], ":1: expected a JSON object"),
        (
            [json.dumps({"messages": [{"role": "bot", "content": "x"}]})],
            ":1: message 1 has unknown role",
        ),
        (
            [json.dumps({"messages": [{"role": "user", "content": "hi"}]})],
            ":1: has no assistant message",
        ),
        (
            [json.dumps({"messages": [{"role": "user", "content": ""}, GOOD[1]]})],
            ":1: message 1 (user) has empty content",
        ),
        ([json.dumps({"messages": []})], ":1: messages must be a non-empty list"),
    ],
)
def test_bad_chat_data_names_file_and_line(tmp_path, lines, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ChatsmithError) as e:
        load_conversations(path)
    assert str(path) in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_other_bad_sources(tmp_path):
    with pytest.raises(ChatsmithError, match="does not exist"):
        load_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ChatsmithError, match="contains no conversations"):
        load_conversations(tmp_path / "empty.jsonl")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(ChatsmithError, match="must be .jsonl"):
        load_conversations(tmp_path / "data.txt")
    # records are read as a stream: the bad bytes are reported when reading reaches them
    good = json.dumps({"messages": GOOD}).encode()
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n\xff\xfe\n")
    with pytest.raises(ChatsmithError, match=r"latin1.jsonl:2: not UTF-8"):
        load_conversations(tmp_path / "latin1.jsonl")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    with pytest.raises(ChatsmithError, match="no .jsonl chat files"):
        load_conversations(empty_dir)
    write_jsonl(tmp_path / "one.jsonl", [GOOD])
    with pytest.raises(ChatsmithError, match="need 2 or more"):
        train_val_conversations(str(tmp_path / "one.jsonl"))


# ---- examples ------------------------------------------------------------------------------


def test_short_conversation_is_one_example(tok):
    ((x, y),) = conversation_examples(tok, GOOD, 64)
    ids, mask = render(tok, GOOD)
    assert x == ids[:-1]
    assert [t for t in y if t != IGNORE_INDEX] == [*tok.encode("hello"), tok.end_id]


def test_long_conversation_splits_at_message_boundaries(tok):
    conv = [{"role": "system", "content": "Be kind."}]
    for i in range(30):
        conv += [
            {"role": "user", "content": f"question number {i} about the weather?"},
            {"role": "assistant", "content": f"answer {i}: it is sunny and warm today."},
        ]
    seq_len = 80  # fits system + user + answer + user: the next example needs the context
    examples = conversation_examples(tok, conv, seq_len)
    assert len(examples) > 5
    ids, mask = render(tok, conv)
    all_learned = [t for t, m in zip(ids, mask, strict=True) if m]
    learned = []
    sys_ids = [tok.system_id, *tok.encode("Be kind."), tok.end_id]
    for x, y in examples:
        assert len(x) == len(y) <= seq_len
        assert x[0] == tok.bos_id and x[1 : 1 + len(sys_ids)] == sys_ids  # system kept
        # after the system prompt each example opens with a user turn (context for the answer)
        assert x[1 + len(sys_ids)] == tok.user_id
        learned += [t for t in y if t != IGNORE_INDEX]
    assert learned == all_learned  # every assistant token learned exactly once


def test_message_longer_than_context_is_cut_not_crashed(tok):
    conv = [{"role": "user", "content": "hi " * 200}, {"role": "assistant", "content": "ok " * 200}]
    examples = conversation_examples(tok, conv, 32)
    assert examples and all(len(x) <= 32 for x, _ in examples)
    assert any(t != IGNORE_INDEX for _, y in examples for t in y)


def test_padding_is_never_learned(tok):
    examples = build_examples(tok, [GOOD, GOOD + GOOD], 64)
    obj = SFT(examples, examples, tok, batch_size=2, seed=0, device=torch.device("cpu"))
    batch = obj.next_batch(None)
    x, y = batch["x"], batch["y"]
    short = min(range(2), key=lambda r: len(examples[r][0]))
    n = len(examples[short][0])
    assert (x[short, n:] == tok.pad_id).all() and (y[short, n:] == IGNORE_INDEX).all()
    assert obj.batch_tokens(batch) == sum(len(e[0]) for e in examples)


# ---- the stage -----------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lowers_held_out_chat_loss_and_chats(tiny_run, chat_data, tmp_path):
    out = tmp_path / "chat"
    args = sft_args(tiny_run, chat_data, lr=3e-3)
    result = sft(args, tiny_flags(out, 60), Reporter(quiet=True))
    # the base model's held-out chat loss, measured the same way
    base = load_run(tiny_run, "cpu")
    tok = base.tokenizer
    val = build_examples(tok, load_conversations(chat_data["val"]), base.cfg.max_seq_len)
    before = SFT(val, val, tok, 8, 0, torch.device("cpu")).evaluate(base.model, final=True)
    after = result.final_eval
    assert after["val_tokens"] == before["val_tokens"] > 0
    assert after["val_loss"] < before["val_loss"] - 0.15, (before, after)
    # a new run folder that chat can use, with the base's tokenizer
    info = json.loads((out / "run.json").read_text())
    assert info["stage"] == "sft" and info["base_run"] == str(tiny_run)
    assert (out / "tokenizer.json").read_bytes() == (tiny_run / "tokenizer.json").read_bytes()
    proc = run_cli(
        "chat",
        str(out),
        "--prompt",
        "Hi! How are you?",
        "--max-tokens",
        "20",
        "--seed",
        "1",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and "<|" not in proc.stdout


@pytest.mark.slow
def test_sft_resume_is_exact(tiny_run, chat_data, tmp_path, monkeypatch):
    args = sft_args(tiny_run, chat_data, max_conversations=80)
    straight = sft(args, tiny_flags(tmp_path / "a", 20), Reporter(quiet=True))
    # interrupt a second, identical run right after its step-10 checkpoint, then resume it
    calls = {"n": 0}
    real_next = SFT.next_batch

    def crashing_next(self, model):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real_next(self, model)

    monkeypatch.setattr(SFT, "next_batch", crashing_next)
    with pytest.raises(KeyboardInterrupt):
        sft(args, tiny_flags(tmp_path / "b", 20), Reporter(quiet=True))
    monkeypatch.setattr(SFT, "next_batch", real_next)
    assert load_checkpoint(tmp_path / "b", with_state=False).step == 10
    resumed = sft(args, tiny_flags(tmp_path / "b", 20, resume=True), Reporter(quiet=True))
    assert resumed.step == straight.step == 20
    wa = load_checkpoint(tmp_path / "a", with_state=False).model_weights()
    wb = load_checkpoint(tmp_path / "b", with_state=False).model_weights()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed.final_eval["val_loss"] == straight.final_eval["val_loss"]


def test_base_run_missing_or_without_chat_markers(tiny_run, chat_data, tmp_path):
    with pytest.raises(ChatsmithError, match="does not exist"):
        sft(
            sft_args(tmp_path / "nope", chat_data),
            tiny_flags(tmp_path / "x", 2),
            Reporter(quiet=True),
        )
    # a run whose tokenizer has no chat markers (e.g. an imported plain BPE tokenizer)
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel()
    hf.train_from_iterator(
        ["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False)
    )
    hf.save(str(broken / "tokenizer.json"))
    # saved before tokenizer fingerprints existed (with one, the swapped file is refused first)
    state = latest_checkpoint_dir(broken) / "state.json"
    meta = json.loads(state.read_text())
    del meta["tokenizer_sha256"]
    state.write_text(json.dumps(meta))
    with pytest.raises(ChatsmithError, match=r"cannot be fine-tuned for chat: .*lacks the special"):
        sft(sft_args(broken, chat_data), tiny_flags(tmp_path / "y", 2), Reporter(quiet=True))


def test_sft_cli_errors_are_one_line(tiny_run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": GOOD}) + "\n" + '{"messages": [}\n')
    proc = run_cli(
        "sft",
        str(tiny_run),
        "--data",
        str(bad),
        "--out",
        str(tmp_path / "o"),
        "--max-steps",
        "2",
        "--device",
        "cpu",
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{bad}:2: malformed JSON" in last
    proc = run_cli(
        "sft",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "o2"),
        "--max-steps",
        "2",
        "--device",
        "cpu",
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "base run" in proc.stderr and "does not exist" in proc.stderr

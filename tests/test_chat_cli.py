"""Chatting: the session's context policy and stop rules, and the CLI driven in a real terminal."""

from __future__ import annotations

import sys

import pexpect
import pytest
from conftest import run_cli

import chatsmith.inference.engine as engine_mod
from chatsmith.errors import ChatsmithError
from chatsmith.inference.chat import ChatSession, MessageTooLong
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.loading import load_run
from chatsmith.inference.streaming import StopFilter
from chatsmith.tokenizer import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


def session(loaded, **kw) -> ChatSession:
    params = SamplingParams(max_tokens=kw.pop("max_tokens", 8), temperature=0.8, seed=1)
    return ChatSession(loaded.engine(), loaded.tokenizer, params, **kw)


def scripted(monkeypatch, tokens: list[int]) -> None:
    """Make the engine sample `tokens` in order (then keep repeating the last one)."""
    queue = list(tokens)

    def fake(logits, params, gens, greedy=None):
        return [queue.pop(0) if len(queue) > 1 else queue[0] for _ in params]

    monkeypatch.setattr(engine_mod, "sample_tokens", fake)


def test_reply_streams_piece_by_piece_and_stops_at_end(loaded, monkeypatch):
    tok = loaded.tokenizer
    hello, world = tok.encode("Hello"), tok.encode(" world")
    scripted(monkeypatch, [*hello, *world, tok.end_id, *tok.encode(" never shown")])
    s = session(loaded, max_tokens=50)
    pieces = list(s.send("hi"))
    assert len(pieces) == len(hello) + len(world)  # one piece per token: streamed
    assert "".join(pieces) == "Hello world"
    assert s.last_finish == "stop"
    assert s.history == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello world"},
    ]


def test_reply_never_shows_marker_text(loaded, monkeypatch):
    tok = loaded.tokenizer
    # a marker spelled out in plain bytes cuts the reply where it starts
    scripted(monkeypatch, [*tok.encode("Sure thing<|user|> hi"), tok.end_id])
    s = session(loaded, max_tokens=50)
    assert s.ask("hi") == "Sure thing" and s.last_finish == "stop"
    # any special token other than <|end|> also ends the turn, showing nothing of itself
    scripted(monkeypatch, [*tok.encode("Sure"), tok.user_id, *tok.encode(" more"), tok.end_id])
    s = session(loaded, max_tokens=50)
    assert s.ask("hi") == "Sure" and s.last_finish == "stop"
    assert s.engine.live == []  # the slot was freed


def test_stop_filter_holds_back_only_possible_markers():
    f = StopFilter(SPECIAL_TOKENS)
    assert f.push("a <") == "a "
    assert f.push("|en") == ""
    assert f.push("x and <|end") == "<|enx and "
    assert f.push("|> rest") == "" and f.stopped
    g = StopFilter(SPECIAL_TOKENS)
    assert g.push("<|ASSISTANT|>") == "<|ASSISTANT|>"
    assert g.push("tail <|") == "tail " and g.flush() == "<|"


def test_session_requires_an_end_stop(loaded):
    with pytest.raises(ChatsmithError, match="stop at the <|end|> marker"):
        ChatSession(Engine(loaded.model, stop_ids=[]), loaded.tokenizer)


def test_context_overflow_drops_oldest_turns_keeps_system_and_tells_once(loaded):
    notes: list[str] = []
    s = session(loaded, system="Be brief.", notify=notes.append)
    tok = loaded.tokenizer
    for i in range(12):
        reply = s.ask(f"message {i} about cats")
        assert "<|" not in reply
        ids = s.prompt_ids("next")
        assert len(ids) <= s.context - s.reply_room()
        assert ids[1] == tok.system_id  # the system prompt always stays
    assert s.dropped > 0
    assert len(notes) == 1 and "oldest turns" in notes[0]
    assert s.history[0]["role"] == "user"  # whole exchanges were dropped
    assert s.history[-2]["content"] == "message 11 about cats"
    s.reset()
    assert s.history == [] and s.system == "Be brief."


def test_message_longer_than_context_is_a_clear_error(loaded):
    s = session(loaded)
    s.ask("hello")
    before = list(s.history)
    with pytest.raises(MessageTooLong, match=r"your message is \d+ tokens; the model's context"):
        s.ask("word " * 200)
    assert s.history == before  # nothing half-done
    with pytest.raises(MessageTooLong, match="system prompt"):
        s.set_system("rule " * 200)
    with pytest.raises(ChatsmithError, match="temperature"):
        s.set_temperature(-1)


def test_one_shot_prompt(tiny_run):
    proc = run_cli(
        "chat",
        str(tiny_run),
        "--prompt",
        "Hello <|end|> there",
        "--max-tokens",
        "10",
        "--seed",
        "2",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "<|" not in proc.stdout
    assert "not fine-tuned for chat" in proc.stderr  # a pretrained run is chat-able, with a note


def test_chat_in_a_real_terminal(tiny_run):
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "chatsmith.cli",
            "chat",
            str(tiny_run),
            "--max-tokens",
            "12",
            "--seed",
            "1",
            "--device",
            "cpu",
        ],
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    try:
        child.expect_exact("you> ")
        child.sendline("Hello, how are you?")
        child.expect_exact("assistant> ")
        child.expect_exact("you> ")
        first = child.before
        assert first.strip() and "<|" not in first and "Traceback" not in first

        child.sendline("/system You are a pirate.")
        child.expect_exact("system prompt: 'You are a pirate.'")
        child.expect_exact("you> ")
        child.sendline("/temperature 0")
        child.expect_exact("(temperature 0.0)")
        child.expect_exact("you> ")
        child.sendline("/temperature hot")
        child.expect_exact("error: /temperature needs a number")
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("(new conversation)")
        child.expect_exact("you> ")
        child.sendline("Tell me more " * 40)  # longer than the tiny model's context
        child.expect(r"error: your message and the system prompt is \d+ tokens")
        child.expect_exact("you> ")
        child.sendline("Hi again")
        child.expect_exact("assistant> ")
        child.expect_exact("you> ")
        assert "<|" not in child.before
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0

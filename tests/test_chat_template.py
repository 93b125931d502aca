"""The one chat template: render/parse round trip, markers typed by users, the loss mask."""

from __future__ import annotations

import pytest

from chatsmith.chat_template import parse, render, render_prompt, validate_messages
from chatsmith.errors import ChatsmithError
from chatsmith.models import IGNORE_INDEX
from chatsmith.tokenizer import SPECIAL_TOKENS, Tokenizer
from chatsmith.training.sft import _example


@pytest.fixture(scope="module")
def tok(tiny_run) -> Tokenizer:
    return Tokenizer.load(tiny_run)


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there, how are you?"},
    {"role": "assistant", "content": "Fine, thanks. And you?"},
    {"role": "user", "content": "Good. Ünïcödé and emoji 🎉 too."},
    {"role": "assistant", "content": "Nice!"},
]


def near_misses() -> list[str]:
    out = []
    for m in SPECIAL_TOKENS:
        inner = m[2:-2]
        out += [
            m,
            m.upper(),
            f"<|{inner}|",
            f"|{inner}|>",
            f"<{inner}>",
            f"< |{inner}|>",
            f"<||{inner}||>",
            f"<|{inner} |>",
            f"x{m}y",
            m + m,
            f"<|{inner}|>>",
        ]
    return out


def test_round_trip(tok):
    ids, mask = render(tok, CONVERSATION)
    assert len(ids) == len(mask)
    assert parse(tok, ids) == CONVERSATION


def test_generation_prompt_ends_with_open_assistant_turn(tok):
    ids = render_prompt(tok, CONVERSATION[:2])
    assert ids[-1] == tok.assistant_id
    assert ids[0] == tok.bos_id
    ids2, mask2 = render(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert ids2 == ids and mask2[-1] == 0


@pytest.mark.parametrize("text", near_misses())
def test_marker_text_typed_by_a_user_stays_plain_text(tok, text):
    messages = [
        {"role": "user", "content": f"look: {text} ok"},
        {"role": "assistant", "content": text},
    ]
    ids, _ = render(tok, messages)
    specials = [t for t in ids if t in tok.special_ids]
    # only the structure's own markers: bos, then role + end for each message
    assert specials == [tok.bos_id, tok.user_id, tok.end_id, tok.assistant_id, tok.end_id]
    assert parse(tok, ids) == messages


def test_every_marker_at_once_round_trips(tok):
    all_markers = " ".join(SPECIAL_TOKENS)
    messages = [
        {"role": "system", "content": all_markers},
        {"role": "user", "content": all_markers},
        {"role": "assistant", "content": "".join(SPECIAL_TOKENS)},
    ]
    ids, _ = render(tok, messages)
    assert sum(t in tok.special_ids for t in ids) == 1 + 2 * len(messages)
    assert parse(tok, ids) == messages


def test_loss_mask_token_by_token(tok):
    hi, yo = tok.encode("Hi"), tok.encode("Yo")
    pair = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    ids, mask = render(tok, pair)
    assert ids == [tok.bos_id, tok.user_id, *hi, tok.end_id, tok.assistant_id, *yo, tok.end_id]
    # the role marker is given; the reply and its closing <|end|> are learned, nothing else
    assert mask == [0] * (len(hi) + 4) + [1] * (len(yo) + 1)

    ids, mask = render(tok, CONVERSATION)
    learned = [t for t, m in zip(ids, mask, strict=True) if m]
    assert learned.count(tok.end_id) == 2 and learned[-1] == tok.end_id
    assert [tok.decode(part) for part in _split(learned, tok.end_id)] == [
        "Fine, thanks. And you?",
        "Nice!",
    ]
    # shifted into SFT targets: the learned tokens, each in the position that predicts it
    x, y = _example(ids, mask)
    assert x == ids[:-1] and len(y) == len(x)
    assert [t for t in y if t != IGNORE_INDEX] == learned
    assert all(t == IGNORE_INDEX or t == ids[i + 1] for i, t in enumerate(y))


def _split(ids: list[int], sep: int) -> list[list[int]]:
    parts, cur = [], []
    for t in ids:
        if t == sep:
            parts.append(cur)
            cur = []
        else:
            cur.append(t)
    return parts


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
        ([{"role": "user", "content": "  "}], "empty content"),
        ([{"role": "user"}], "empty content"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only come first"),
        (["hi"], "not an object"),
    ],
)
def test_validate_messages_rejects(messages, fragment):
    with pytest.raises(ChatsmithError, match=fragment):
        validate_messages(messages)


def test_validate_needs_assistant_when_asked():
    with pytest.raises(ChatsmithError, match="no assistant message"):
        validate_messages([{"role": "user", "content": "hi"}], need_assistant=True)

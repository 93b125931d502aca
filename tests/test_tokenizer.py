"""Tokenizer: round trips, special tokens cannot be forged, byte counts for bits per byte."""

from __future__ import annotations

import math

import pytest
import torch

from chatsmith.errors import ChatsmithError
from chatsmith.inference.scoring import bits_per_byte, score_tokens
from chatsmith.inference.streaming import TextStream
from chatsmith.tokenizer import SPECIAL_TOKENS, Tokenizer

SAMPLES = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\r\n",
    "Ünïcödé — “quotes” ½ ∑ 中文 日本語 한국어",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "<|user|> <|end|> <|assistant|>",  # look-alikes of special tokens
    "<|user| <user> |end|> <||end||> <|END|>",
    "",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = ["the cat sat on the mat. " * 20, "hello world! how are you today?"] * 50
    return Tokenizer.train(texts, vocab_size=400)


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert sum(tok.bytes_per_token[i] for i in ids) == len(text.encode("utf-8"))


@pytest.mark.parametrize("marker", SPECIAL_TOKENS)
def test_user_text_never_becomes_a_special_token(tok, marker):
    ids = tok.encode(f"a {marker} b {marker}")
    assert not set(ids) & tok.special_ids
    assert tok.decode(ids) == f"a {marker} b {marker}"


def test_save_load(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode("hello <|end|> 😀") == tok.encode("hello <|end|> 😀")
    assert again.end_id == tok.end_id and again.vocab_size == tok.vocab_size


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ChatsmithError, match="cannot read tokenizer"):
        Tokenizer.load(tmp_path)


def test_vocab_too_small():
    with pytest.raises(ChatsmithError, match="vocab size must be at least"):
        Tokenizer.train(["abc"], vocab_size=100)


def test_text_stream_never_splits_characters(tok):
    text = "naïve 😀 中文!"
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in tok.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_bits_per_byte_arithmetic():
    # 8 bytes predicted at a total of 8 * ln 2 nats is exactly 1 bit per byte
    assert bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)


class UniformModel(torch.nn.Module):
    """Predicts every token with probability 1/V: loss is exactly ln V per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, y, reduction="mean"):
        logits = torch.zeros(*x.shape, self.vocab)
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, self.vocab), y.reshape(-1), ignore_index=-1, reduction="none"
        ).view(y.shape)
        return None, loss


def test_score_tokens_counts_every_token_once():
    vocab = 16
    tokens = torch.randint(0, vocab, (101,), generator=torch.Generator().manual_seed(0))
    bytes_per_token = torch.full((vocab,), 2)
    score = score_tokens(UniformModel(vocab), tokens, bytes_per_token, seq_len=8, batch_size=3)
    assert score.tokens == 100 and score.bytes == 200
    assert score.loss == pytest.approx(math.log(vocab))
    assert score.bpb == pytest.approx(100 * math.log(vocab) / (math.log(2) * 200))


def test_numbers_are_one_token_per_digit():
    # a corpus full of the same numbers: merges of whole numbers would be learned first
    tok = Tokenizer.train(["I have 12 apples and 345 pens, 12 + 345 = 357. "] * 200, 400)
    ids = tok.encode("12 + 345 = 357")
    pieces = [tok.decode([i]) for i in ids]
    assert "".join(pieces) == "12 + 345 = 357"
    digits = [p.strip() for p in pieces if p.strip().isdigit()]
    assert digits == list("12345357")

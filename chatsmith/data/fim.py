"""Fill-in-the-middle (FIM): teach a left-to-right model to write the middle of a document.

Following Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the
Middle"), a document is cut at two character positions drawn uniformly at random into
(prefix, middle, suffix) and rearranged so that the middle comes last:

    PSM:  <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle <|end|>
    SPM:  <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle <|end|>

(SPM is the paper's variant in which prefix and middle are adjacent.) Plain next-token
prediction on such sequences teaches infilling; `<|end|>` teaches the model when the middle is
done, and the engine stops on it. The markers are reserved special tokens and every text part
is encoded as user text, so code that contains "<|fim_middle|>" cannot forge one, just as with
the chat template. Each part is encoded on its own, so token boundaries fall exactly on the
split points and prefix + middle + suffix decodes back to the document.

A small model given minutes of training does not learn where a middle of random length ends
(it never writes `<|end|>`, so every infill runs on past the cursor). Half of the FIM examples
are therefore cut at line breaks instead, with a middle of 1 to 4 whole lines: what an editor
asks for when the cursor sits at the end of a line, and a stop that follows a visible rule (the
next line would be the suffix's first). Such a middle and its suffix each start with a line
break, as the cuts of `eval --code` do.

The paper splits whole documents; ours are source files much longer than a CPU model's
context, so each file is first cut at line breaks into pieces that fit the context (as the
paper's context-level FIM does after chunking), and the FIM rate applies to each piece.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import Tokenizer

ORDERS = ("psm", "spm")
SPM_SHARE = 0.5  # the paper trains on both orders jointly, half each
LINE_SHARE = 0.5  # share of FIM examples whose middle is whole lines
LINE_MIDDLE = (1, 4)  # lines in such a middle
CHARS_PER_CONTEXT_TOKEN = 2  # a piece of 2 x seq_len characters fits the context with room


@dataclass(frozen=True)
class FimSplit:
    prefix: str
    middle: str
    suffix: str

    @property
    def document(self) -> str:
        return self.prefix + self.middle + self.suffix


def check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ChatsmithError(
            f"--fim is the share of documents turned into FIM, in [0, 1]; got {rate}"
        )
    return float(rate)


def check_tokenizer(tok: Tokenizer) -> None:
    if not tok.has_fim:
        raise ChatsmithError(
            "this run's tokenizer has no fill-in-the-middle markers (it predates them); "
            "pretrain a new run to use a suffix"
        )


def split_at_random(text: str, rng: random.Random) -> FimSplit:
    """Two cut points drawn uniformly over the character positions 0..len(text)."""
    i, j = sorted(rng.randint(0, len(text)) for _ in range(2))
    return FimSplit(text[:i], text[i:j], text[j:])


def split_at_lines(text: str, rng: random.Random) -> FimSplit:
    """A middle of 1-4 whole lines, cut at the line break before its first line and at the one
    ending its last (falls back to `split_at_random` for text of fewer lines)."""
    breaks = [i for i, c in enumerate(text) if c == "\n"]
    k = rng.randint(*LINE_MIDDLE)
    if len(breaks) <= k:
        return split_at_random(text, rng)
    a = rng.randrange(len(breaks) - k)
    i, j = breaks[a], breaks[a + k]
    return FimSplit(text[:i], text[i:j], text[j:])


def fim_ids(tok: Tokenizer, split: FimSplit, order: str = "psm") -> list[int]:
    """The training sequence of one FIM example (no BOS; the caller places documents)."""
    check_tokenizer(tok)
    pre, mid, suf = (tok.encode(t) for t in (split.prefix, split.middle, split.suffix))
    return _arrange(tok, pre, mid, suf, order)


def _arrange(tok: Tokenizer, pre: list[int], mid: list[int], suf: list[int], order: str):
    p, s, m = tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id
    if order == "psm":
        return [p, *pre, s, *suf, m, *mid, tok.end_id]
    if order == "spm":
        return [p, s, *suf, m, *pre, *mid, tok.end_id]
    raise ChatsmithError(f"unknown FIM order {order!r} (use {', '.join(ORDERS)})")


def infill_prompt(tok: Tokenizer, prefix: str, suffix: str, budget: int) -> list[int]:
    """`<|bos|> <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix`, the SPM order, in
    at most `budget` tokens: text far from the cursor goes first (the start of the prefix, the
    end of the suffix), each side keeping at least half the room if it needs it.

    SPM because a small model trained on both orders infills far better from it: with the
    prefix right before the middle its first line continues the code as left-to-right text
    does (benchmarks/RESULTS.md, issue 12: 35 exact single-line infills of 500 from SPM, 0
    from PSM, the same 10-minute model and stop), as the FIM paper also found SPM the stronger
    mode."""
    check_tokenizer(tok)
    pre, suf = tok.encode(prefix), tok.encode(suffix)
    room = budget - 4
    if room < 2:
        raise ChatsmithError("the context is too small for an infill prompt")
    if len(pre) + len(suf) > room:
        keep_suf = min(len(suf), max(room // 2, room - len(pre)))
        keep_pre = room - keep_suf
        pre, suf = pre[len(pre) - keep_pre :], suf[:keep_suf]
    return [tok.bos_id, tok.fim_prefix_id, tok.fim_suffix_id, *suf, tok.fim_middle_id, *pre]


def parse_fim(tok: Tokenizer, ids: list[int]) -> FimSplit:
    """Inverse of `fim_ids` for either order."""
    p, s, m = tok.fim_prefix_id, tok.fim_suffix_id, tok.fim_middle_id
    if len(ids) < 4 or ids[0] != p or ids[-1] != tok.end_id:
        raise ChatsmithError("not a FIM sequence")
    body = ids[1:-1]
    if body[0] == s:  # SPM: the prefix is not marked off from the middle, so it is empty here
        mi = body.index(m)
        return FimSplit("", tok.decode(body[mi + 1 :]), tok.decode(body[1:mi]))
    si, mi = body.index(s), body.index(m)
    return FimSplit(
        tok.decode(body[:si]), tok.decode(body[mi + 1 :]), tok.decode(body[si + 1 : mi])
    )


def pieces(text: str, max_chars: int) -> list[str]:
    """Cut text at line breaks into pieces of at most `max_chars` characters (a longer single
    line is cut inside). Joining the pieces gives the text back."""
    out: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.append(line[:max_chars])
            line = line[max_chars:]
        if len(current) + len(line) > max_chars and current:
            out.append(current)
            current = ""
        current += line
    if current:
        out.append(current)
    return out


def fim_token_stream(
    tok: Tokenizer, docs: Iterable[str], rate: float, seq_len: int, seed: int
) -> torch.Tensor:
    """Documents as one int32 token stream, each led by BOS, with a `rate` share of their
    context-sized pieces turned into FIM examples (PSM or SPM, half each).

    Pieces left as plain text are joined back and encoded together, so at rate 0 this is
    exactly `tokenize_documents`."""
    check_rate(rate)
    if rate > 0:
        check_tokenizer(tok)
    rng = random.Random(seed)
    max_chars = CHARS_PER_CONTEXT_TOKEN * seq_len
    texts: list[str] = []  # everything to encode, in order
    plan: list[list[tuple[str | None, int]]] = []  # per document: (FIM order or None, text index)
    for doc in docs:
        entries: list[tuple[str | None, int]] = []
        plain = ""
        for piece in pieces(doc, max_chars) if rate > 0 else [doc]:
            if not (rate > 0 and rng.random() < rate):
                plain += piece
                continue
            if plain:
                entries.append((None, len(texts)))
                texts.append(plain)
                plain = ""
            order = "spm" if rng.random() < SPM_SHARE else "psm"
            cut = split_at_lines if rng.random() < LINE_SHARE else split_at_random
            split = cut(piece, rng)
            entries.append((order, len(texts)))
            texts += [split.prefix, split.middle, split.suffix]
        if plain:
            entries.append((None, len(texts)))
            texts.append(plain)
        plan.append(entries)
    if not plan:
        raise ChatsmithError("no documents to tokenize")
    encoded = _encode_all(tok, texts)
    out: list[int] = []
    for entries in plan:
        out.append(tok.bos_id)
        for order, i in entries:
            if order is None:
                out += encoded[i]
            else:
                out += _arrange(tok, encoded[i], encoded[i + 1], encoded[i + 2], order)
    return torch.tensor(out, dtype=torch.int32)


def _encode_all(tok: Tokenizer, texts: list[str], chunk: int = 512) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk):
        out += tok.encode_batch(texts[i : i + chunk])
    return out

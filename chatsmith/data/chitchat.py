"""The built-in corpus: ~7k real two-person conversations from the `chitchat-dataset` package.

The held-out split is fixed: conversations are ordered by their id and every 20th one (5%)
is held out, so every stage (pretraining, SFT, evaluation) sees the same split.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from chatsmith.errors import ChatsmithError

HELD_OUT_EVERY = 20
SPLITS = ("train", "val")


@lru_cache(maxsize=1)
def _conversations() -> tuple[tuple[str, tuple[str, ...]], ...]:
    try:
        import chitchat_dataset
    except ImportError:
        raise ChatsmithError("the built-in corpus needs the chitchat-dataset package") from None
    raw = json.loads((Path(chitchat_dataset.__file__).parent / "dataset.json").read_text())
    out = []
    for conv_id in sorted(raw):
        # a message is a burst of utterances by one speaker: one turn, one line
        turns = tuple(
            " ".join(u["text"].strip() for u in message if u["text"].strip())
            for message in raw[conv_id]["messages"]
        )
        turns = tuple(t for t in turns if t)
        if turns:
            out.append((conv_id, turns))
    return tuple(out)


def conversations(split: str) -> list[tuple[str, ...]]:
    """Turns of each conversation in the split, alternating between the two speakers."""
    if split not in SPLITS:
        raise ChatsmithError(f"unknown split {split!r}; choose from {SPLITS}")
    held_out = split == "val"
    return [t for i, (_, t) in enumerate(_conversations()) if (i % HELD_OUT_EVERY == 0) == held_out]


def documents(split: str) -> list[str]:
    """Conversations as plain text documents, one turn per line, for pretraining."""
    return ["\n".join(turns) for turns in conversations(split)]


def chat_conversations(split: str) -> list[list[dict]]:
    """Conversations as OpenAI message lists: the first speaker is the user."""
    return [
        [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        for turns in conversations(split)
    ]

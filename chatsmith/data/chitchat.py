"""The built-in corpus: ~7k real two-person conversations from the `chitchat-dataset` package.

The held-out split is fixed: conversations are ordered by their id and the last of every 20
(5%) is held out (`data.splits.split_every`), so every stage (pretraining, SFT, evaluation)
sees the same split. Every stage names this corpus `BUILTIN_NAME` ("builtin:chitchat").
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from chatsmith.data.splits import BUILTIN_HELD_OUT_EVERY, split_every
from chatsmith.errors import ChatsmithError

BUILTIN_NAME = "builtin:chitchat"


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
    turns = [t for _, t in _conversations()]
    return split_every(turns, split, BUILTIN_HELD_OUT_EVERY)


def documents(split: str) -> list[str]:
    """Conversations as plain text documents, one turn per line, for pretraining."""
    return ["\n".join(turns) for turns in conversations(split)]


def chat_conversations(split: str) -> list[list[dict]]:
    """Conversations as OpenAI message lists: the first speaker is the user."""
    return [
        [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        for turns in conversations(split)
    ]

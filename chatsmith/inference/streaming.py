"""Streaming text out of a decoder: token ids -> text pieces -> text cut at stop strings.

`TextStream` never splits a UTF-8 character; `StopFilter` ends the text at the first stop
string and holds back a tail that might be the start of one. The chat session (stop strings
= the chat markers) and the server (the request's `stop` strings) both stream through them.
"""

from __future__ import annotations

from collections.abc import Sequence

from chatsmith.tokenizer import Tokenizer


class TextStream:
    """Byte-level tokens can end mid-character; hold such a tail back until it completes."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.buffer = b""

    def push(self, token: int) -> str:
        self.buffer += self.tokenizer.token_bytes(token)
        try:
            text, self.buffer = self.buffer.decode("utf-8"), b""
            return text
        except UnicodeDecodeError as e:
            if e.reason == "unexpected end of data" and len(self.buffer) - e.start < 4:
                text = self.buffer[: e.start].decode("utf-8")
                self.buffer = self.buffer[e.start :]
                return text
            return self.flush()  # bytes that can never become valid: show replacement marks

    def flush(self) -> str:
        text, self.buffer = self.buffer.decode("utf-8", errors="replace"), b""
        return text


class StopFilter:
    """Cut streamed text just before the first of `stops`; `stopped` then turns true.

    Text that might be the start of a stop string is held back until it is known not to be,
    so a streamed reply never shows part of one. After a stop, everything is swallowed.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if not self.stops:  # nothing to look for (most requests): pass the text straight on
            return text
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        cut = len(self.pending) - self._possible_start()
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> str:
        """The held-back tail: at the end of the text it can no longer become a stop string."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _possible_start(self) -> int:
        """Length of the longest tail of `pending` that is a proper prefix of a stop string."""
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(s[:n]):
                    keep = n
                    break
        return keep


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` ended before the first of `stops`, as a stream through `StopFilter` would be."""
    f = StopFilter(stops)
    return f.push(text) + f.flush()

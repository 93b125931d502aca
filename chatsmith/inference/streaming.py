"""Turn a stream of token ids into a stream of text pieces, never splitting a UTF-8 character."""

from __future__ import annotations

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

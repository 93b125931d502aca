"""A multi-turn chat with a model, free of any user interface (the CLI and the server use it).

The session keeps the history, an optional system prompt and the sampling settings; each
`send` renders the whole conversation with the chat template and streams the reply through
the shared `Engine`. When the conversation outgrows the context, the oldest exchanges are
dropped (the system prompt always stays) and `notify` is called once to say so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from chatsmith.chat_template import render_prompt
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine, SamplingParams
from chatsmith.inference.streaming import StopFilter, TextStream
from chatsmith.tokenizer import Tokenizer

MIN_REPLY_ROOM = 16


class MessageTooLong(ChatsmithError):
    """One message (with the system prompt) leaves no room for a reply in the context."""


@dataclass
class ChatSession:
    """History, system prompt and sampling settings of one conversation with a model."""

    engine: Engine
    tokenizer: Tokenizer
    params: SamplingParams = field(
        default_factory=lambda: SamplingParams(
            max_tokens=256, temperature=0.8, top_k=50, top_p=0.95
        )
    )
    system: str | None = None
    notify: Callable[[str], None] = lambda message: None
    history: list[dict] = field(default_factory=list)
    dropped: int = 0  # messages dropped to fit the context since the last reset
    _told: bool = False
    last_finish: str | None = None

    def __post_init__(self) -> None:
        if self.tokenizer.stop_ids[0] not in self.engine.stop_ids:
            raise ChatsmithError("the engine must stop at the chat template's end marker to chat")
        if self.system is not None:
            self.set_system(self.system)

    @property
    def context(self) -> int:
        return self.engine.context

    def reply_room(self) -> int:
        """Tokens of context kept free for the reply."""
        return max(1, min(self.params.max_tokens, max(MIN_REPLY_ROOM, self.context // 4)))

    def reset(self) -> None:
        """Forget the conversation (the system prompt and settings stay)."""
        self.history.clear()
        self.dropped, self._told = 0, False

    def set_system(self, text: str | None) -> None:
        """Set (or with None/blank, clear) the system prompt; it must leave room to chat."""
        text = text if text and text.strip() else None
        if text is not None:
            head = render_prompt(self.tokenizer, [{"role": "system", "content": text}])
            # the system prompt plus a minimal user turn and the reply must fit
            if len(head) + 3 + self.reply_room() > self.context:
                raise MessageTooLong(
                    f"the system prompt is {len(head)} tokens; the model's context is "
                    f"{self.context} tokens, too small to hold it and a conversation"
                )
        self.system = text

    def set_temperature(self, value: float) -> None:
        if not value >= 0:  # also rejects NaN
            raise ChatsmithError(f"temperature must be a number >= 0, got {value}")
        self.params.temperature = value

    def _messages(self, history: list[dict]) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + history

    def prompt_ids(self, user_text: str) -> list[int]:
        """The prompt for a reply to `user_text`, dropping old exchanges to fit the context."""
        if not user_text.strip():
            raise ChatsmithError("the message is empty")
        if self.engine.seq2seq:
            # an encoder-decoder learnt one turn -> its reply: the source is the last message
            ids = self.tokenizer.encode(user_text)
            if len(ids) > self.context:
                raise MessageTooLong(
                    f"your message is {len(ids)} tokens; the model reads at most "
                    f"{self.context}: shorten it"
                )
            return ids
        limit = self.context - self.reply_room()
        turn = [{"role": "user", "content": user_text}]
        alone = render_prompt(self.tokenizer, self._messages(turn))
        if len(alone) > limit:
            extra = " and the system prompt" if self.system else ""
            raise MessageTooLong(
                f"your message{extra} is {len(alone)} tokens; the model's context is "
                f"{self.context} tokens with {self.reply_room()} kept for the reply: "
                "shorten it"
            )
        history = self.history
        ids = render_prompt(self.tokenizer, self._messages(history + turn))
        drop = 0
        while len(ids) > limit:
            # drop the oldest exchange whole, so the history still starts with the user
            drop += 2 if len(history) - drop >= 2 and history[drop]["role"] == "user" else 1
            ids = render_prompt(self.tokenizer, self._messages(history[drop:] + turn))
        if drop:
            del self.history[:drop]
            self.dropped += drop
            if not self._told:
                self._told = True
                self.notify(
                    f"note: the conversation outgrew the model's {self.context}-token context; "
                    "the oldest turns are being dropped (the system prompt is kept)"
                )
        return ids

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the reply to `user_text` as text pieces; the exchange joins the history.

        `last_finish` then says why the reply ended: "stop" (the model closed its turn),
        "length" (max_tokens or the context ran out) or "cancelled" (the caller stopped
        iterating; the part produced so far is kept).
        """
        prompt = self.prompt_ids(user_text)
        seq = self.engine.add(prompt, self.params)
        self.history.append({"role": "user", "content": user_text})
        # markers are special tokens, so the tokenizer never yields one as text by accident,
        # but a model can spell one out of byte tokens: such text ends the reply too
        stream, guard = TextStream(self.tokenizer), StopFilter(self.tokenizer.special_texts)
        parts: list[str] = []
        self.last_finish = None
        try:
            while not seq.finished and not guard.stopped:
                for s, token in self.engine.step():
                    if s is not seq or token is None:
                        continue
                    if token in self.tokenizer.special_ids:
                        guard.stopped = True  # any marker ends the assistant's turn
                        break
                    piece = guard.push(stream.push(token))
                    if not parts:  # the reply's text starts at its first visible character
                        piece = piece.lstrip()
                    if piece:
                        parts.append(piece)
                        yield piece
            tail = guard.flush() if guard.stopped else guard.push(stream.flush()) + guard.flush()
            if not parts:
                tail = tail.lstrip()
            if tail:
                parts.append(tail)
                yield tail
        finally:
            self.engine.release(seq)  # frees the slot at once if the reply was cut short
            self.last_finish = "stop" if guard.stopped else seq.finish_reason
            self.history.append({"role": "assistant", "content": "".join(parts).strip()})

    def ask(self, user_text: str) -> str:
        """The whole reply at once."""
        return "".join(self.send(user_text))

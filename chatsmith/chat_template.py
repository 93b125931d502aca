"""Chat templates, used by SFT, RL, the chat CLI, the server and evaluation.

Every run has one template, `tok.chat` of its tokenizer: chatsmith's own (below) for runs it
trained, or the imported model's Jinja template (`chatsmith.jinja_template`) for imported
runs. Both turn a message list into ids plus a mask of what SFT learns, and name the ids that
end a reply. In chatsmith's own template a conversation becomes

    <|bos|> <|system|> text <|end|> <|user|> text <|end|> <|assistant|> text <|end|> ...

where the markers are reserved special tokens and every `text` is encoded as plain user text
(`Tokenizer.encode` never produces a special token, so a user typing "<|end|>" cannot forge
a turn boundary). To ask for a reply, the prompt ends with `<|assistant|>` and sampling
stops at `<|end|>`.
"""

from __future__ import annotations

from typing import Protocol

from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import ASSISTANT, BOS, END, Tokenizer

ROLES = ("system", "user", "assistant")


class ChatTemplate(Protocol):
    stop_ids: tuple[int, ...]  # a reply ends at any of these; the first is the end of a turn

    def render(
        self, messages: list[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, mask): mask[i] is 1 where ids[i] is an assistant token SFT learns."""
        ...

    def render_prompt(self, messages: list[dict]) -> list[int]: ...

    def message_starts(self, ids: list[int]) -> list[int] | None:
        """Where each message begins in rendered ids, or None if the template cannot say."""
        ...

    def jinja(self) -> str:
        """The template as Hugging Face Jinja, with `{% generation %}` around learned tokens."""
        ...


def template_for(tok: Tokenizer) -> ChatTemplate:
    """The template a tokenizer's run chats with: imported runs carry their own."""
    if tok.chat_format is None:
        return ChatsmithTemplate(tok)
    from chatsmith.jinja_template import JinjaTemplate  # jinja2 only for imported runs

    return JinjaTemplate(tok, tok.chat_format)


def validate_messages(
    messages: object, where: str = "conversation", need_assistant: bool = False
) -> list[dict]:
    """Check an OpenAI-style message list; return it with plain `role`/`content` dicts."""
    if not isinstance(messages, list) or not messages:
        raise ChatsmithError(f"{where}: messages must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatsmithError(f"{where}: message {i + 1} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatsmithError(
                f"{where}: message {i + 1} has unknown role {role!r} (use {', '.join(ROLES)})"
            )
        if not isinstance(content, str) or not content.strip():
            raise ChatsmithError(f"{where}: message {i + 1} ({role}) has empty content")
        if role == "system" and i != 0:
            raise ChatsmithError(f"{where}: a system message may only come first")
        out.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise ChatsmithError(f"{where}: has no assistant message to learn from")
    return out


class ChatsmithTemplate:
    """chatsmith's own markers, as in the module docstring."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        # `<|end|>`, or `<|bos|>`: a model that skips the end marker and starts a new
        # document has finished its reply too
        self.stop_ids = (tok.end_id, tok.bos_id)
        self._role_ids = {
            "system": tok.system_id,
            "user": tok.user_id,
            "assistant": tok.assistant_id,
        }

    def render(
        self, messages: list[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        """The mask marks assistant content and the `<|end|>` that closes it: the model learns
        what to say and when to stop, never the user's or system's words."""
        tok = self.tok
        ids, mask = [tok.bos_id], [0]
        for m in messages:
            body = tok.encode(m["content"])
            learn = 1 if m["role"] == "assistant" else 0
            ids += [self._role_ids[m["role"]], *body, tok.end_id]
            mask += [0] + [learn] * (len(body) + 1)
        if add_generation_prompt:
            ids.append(tok.assistant_id)
            mask.append(0)
        return ids, mask

    def render_prompt(self, messages: list[dict]) -> list[int]:
        return self.render(messages, add_generation_prompt=True)[0]

    def message_starts(self, ids: list[int]) -> list[int]:
        roles = set(self._role_ids.values())
        return [i for i, t in enumerate(ids) if t in roles]

    def jinja(self) -> str:
        # whitespace control keeps the rendered text exactly the markers and the contents
        return (
            f"{{{{- '{BOS}' -}}}}"
            "{%- for message in messages -%}"
            "{{- '<|' + message['role'] + '|>' -}}"
            "{%- if message['role'] == 'assistant' -%}"
            f"{{%- generation -%}}{{{{- message['content'] + '{END}' -}}}}{{%- endgeneration -%}}"
            f"{{%- else -%}}{{{{- message['content'] + '{END}' -}}}}{{%- endif -%}}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{- '{ASSISTANT}' -}}}}{{%- endif -%}}"
        )


def render(
    tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and a mask that is 1 where the model should learn to predict
    (mask[i] refers to ids[i] as a prediction target), in the run's own template."""
    return tok.chat.render(messages, add_generation_prompt)


def render_prompt(tok: Tokenizer, messages: list[dict]) -> list[int]:
    """Ids that ask the model for the next assistant reply."""
    return tok.chat.render_prompt(messages)


def parse(tok: Tokenizer, ids: list[int]) -> list[dict]:
    """Inverse of chatsmith's own `render`: the messages in a rendered id sequence (an open last
    turn included)."""
    roles = {tok.system_id: "system", tok.user_id: "user", tok.assistant_id: "assistant"}
    messages: list[dict] = []
    role, body = None, []
    for t in ids:
        if t in roles:
            role, body = roles[t], []
        elif t == tok.end_id and role is not None:
            messages.append({"role": role, "content": tok.decode(body)})
            role = None
        elif role is not None:
            body.append(t)
    if role is not None and body:
        messages.append({"role": role, "content": tok.decode(body)})
    return messages

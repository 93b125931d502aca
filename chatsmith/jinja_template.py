"""An imported model's own Jinja chat template, rendered safely into ids and an SFT mask.

The template runs in jinja2's sandbox, as transformers runs it. The injection rule holds:
before rendering, every special-token text inside a message (and the escape character itself)
is replaced by a private-use escape, so the only markers left in the rendered text are the
ones the template wrote. The text is then cut at those markers, escapes are put back, and each
piece between markers is encoded as plain text: a user who types `<|im_end|>` gets ordinary
tokens. Between markers the pieces are exactly what transformers encodes, so ids agree with
`apply_chat_template` whenever no message contains a marker.

What SFT learns: the tokens inside `{% generation %}` blocks when the template has them;
otherwise each assistant message's text plus the marker(s) that close its turn, up to and
including the first marker after it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import Tokenizer

ESC = "\ue000"  # private-use escape: ESC + chr(ESC_BASE + k) stands for the k-th escaped text
ESC_BASE = 0xE100
GEN_OPEN, GEN_CLOSE = ESC + "\ue0f0", ESC + "\ue0f1"  # where a {% generation %} block ran


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: marks the learned span with two escapes."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller) -> str:
        return GEN_OPEN + caller() + GEN_CLOSE


def _raise(message: str):
    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _sandbox() -> ImmutableSandboxedEnvironment:
    # the settings transformers renders chat templates with, so whitespace comes out the same
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _never_prepend(hf: HFTokenizer) -> HFTokenizer:
    """A copy that does not add SentencePiece's leading "▁": transformers adds it only to the
    text at the very start, not to text that follows a marker."""
    spec = json.loads(hf.to_str())
    changed = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
                node["prepend_scheme"] = "never"
                changed.append(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec.get("pre_tokenizer"))
    if not changed:
        return hf  # byte-level tokenizers encode text after a marker as at the start
    copy = HFTokenizer.from_str(json.dumps(spec))
    copy.encode_special_tokens = True
    return copy


class JinjaTemplate:
    """The ChatTemplate of an imported run (see chatsmith.chat_template.ChatTemplate)."""

    def __init__(self, tok: Tokenizer, chat_format: dict):
        self.tok = tok
        self.source = chat_format.get("chat_template")
        if not self.source:
            raise ChatsmithError("the imported model has no chat template: it cannot chat")
        try:
            self.template = _sandbox().from_string(self.source)
        except TemplateError as e:
            raise ChatsmithError(f"the model's chat template does not parse: {e}") from None
        self.variables = {
            k: chat_format.get(k)
            for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            if chat_format.get(k) is not None
        }
        self.stop_ids = tuple(chat_format.get("stop_token_ids") or [tok.end_id])
        specials = sorted((tok.hf.id_to_token(i) for i in tok.special_ids), key=len, reverse=True)
        self.marker_ids = {s: tok.hf.token_to_id(s) for s in specials}
        self.escaped = [ESC, *specials]
        self._escape_re = re.compile("|".join(re.escape(s) for s in self.escaped))
        # with no special tokens at all, split at a text that rendering has already removed
        markers = specials or [GEN_OPEN]
        self._split_re = re.compile("(" + "|".join(re.escape(s) for s in markers) + ")")
        self._after_marker = _never_prepend(tok.hf)

    # -- escaping ---------------------------------------------------------------------------
    def _escape(self, text: str) -> str:
        return self._escape_re.sub(
            lambda m: ESC + chr(ESC_BASE + self.escaped.index(m.group(0))), text
        )

    def _unescape(self, text: str) -> tuple[str, list[int]]:
        """Original text and, per character of it, its index in `text`."""
        out, where, i = [], [], 0
        while i < len(text):
            k = ord(text[i + 1]) - ESC_BASE if text[i] == ESC and i + 1 < len(text) else -1
            if 0 <= k < len(self.escaped):
                original = self.escaped[k]
                out.append(original)
                where += [i] * len(original)
                i += 2
            else:
                out.append(text[i])
                where.append(i)
                i += 1
        return "".join(out), where

    # -- rendering --------------------------------------------------------------------------
    def _text(self, messages: list[dict], add_generation_prompt: bool) -> str:
        safe = [{**m, "content": self._escape(m["content"])} for m in messages]
        try:
            return self.template.render(
                messages=safe, add_generation_prompt=add_generation_prompt, **self.variables
            )
        except TemplateError as e:
            raise ChatsmithError(f"the model's chat template refused the messages: {e}") from None

    def _encode(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of rendered text and the character each id starts at."""
        ids, starts, pos = [], [], 0
        for piece in self._split_re.split(text):
            if piece in self.marker_ids:
                ids.append(self.marker_ids[piece])
                starts.append(pos)
            elif piece:
                plain, where = self._unescape(piece)
                encoder = self.tok.hf if pos == 0 else self._after_marker
                enc = encoder.encode(plain, add_special_tokens=False)
                ids += enc.ids
                starts += [pos + where[min(a, len(where) - 1)] for a, _ in enc.offsets]
            pos += len(piece)
        return ids, starts

    def _rendered(
        self, messages: list[dict], add_generation_prompt: bool
    ) -> tuple[str, list[tuple[int, int]] | None]:
        """Rendered text without generation escapes, and the spans those escapes enclosed
        (None when the template has no generation block)."""
        text = self._text(messages, add_generation_prompt)
        if GEN_OPEN not in text:
            return text, None
        clean, spans, start, n = [], [], 0, 0
        for part in re.split(f"({GEN_OPEN}|{GEN_CLOSE})", text):
            if part == GEN_OPEN:
                start = n
            elif part == GEN_CLOSE:
                spans.append((start, n))
            else:
                clean.append(part)
                n += len(part)
        return "".join(clean), spans

    def render(
        self, messages: list[dict], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        text, spans = self._rendered(messages, add_generation_prompt)
        if spans is None:
            spans = self._assistant_spans(text, messages)
        ids, starts = self._encode(text)
        mask = [int(any(a <= s < b for a, b in spans)) for s in starts]
        return ids, mask

    def _assistant_spans(self, text: str, messages: list[dict]) -> list[tuple[int, int]]:
        """Each assistant message's text in `text`, up to the end of the first marker after."""
        spans, cursor = [], 0
        for m in messages:
            content = self._escape(m["content"])
            at = text.find(content, cursor)
            if at < 0:
                content = content.strip()
                at = text.find(content, cursor)
            if at < 0:
                if m["role"] == "assistant":
                    raise ChatsmithError(
                        "the model's chat template rewrites assistant messages, so chatsmith "
                        "cannot tell which tokens to learn"
                    )
                continue
            end = at + len(content)
            cursor = end
            if m["role"] == "assistant":
                marker = self._split_re.search(text, end)
                spans.append((at, marker.end() if marker else len(text)))
        return spans

    def render_prompt(self, messages: list[dict]) -> list[int]:
        return self._encode(self._rendered(messages, add_generation_prompt=True)[0])[0]

    def message_starts(self, ids: list[int]) -> None:
        return None  # a foreign template's turn boundaries are not known token by token

    def jinja(self) -> str:
        return self.source

"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), with special tokens reserved up front.

User text is always encoded with special-token matching switched off, so typing `<|user|>`
yields ordinary byte tokens, never the marker: only code that builds sequences on purpose
(the chat template, document separators) can place a special token.

A run imported from Hugging Face keeps its own tokenizer (byte-level BPE or SentencePiece
converted to tokenizer.json) without chatsmith's markers; its `chat_format.json` names its
begin/end/pad tokens and chat template, and its `chat` template renders conversations.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.pre_tokenizers import ByteLevel

from chatsmith.errors import ChatsmithError
from chatsmith.files import write_atomic, write_json_atomic

if TYPE_CHECKING:
    from chatsmith.chat_template import ChatTemplate

BOS = "<|bos|>"  # begins every document; also separates packed documents
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # closes one chat message
MASK = "<|mask|>"  # for masked-LM (encoder) training
FIM_PREFIX = "<|fim_prefix|>"  # fill-in-the-middle markers (see chatsmith.data.fim)
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_TOKENS = [FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE]
SPECIAL_TOKENS = [BOS, PAD, SYSTEM, USER, ASSISTANT, END, MASK, *FIM_TOKENS]
REQUIRED_TOKENS = SPECIAL_TOKENS[:7]  # tokenizers saved before the FIM markers lack them
TOKENIZER_FILE = "tokenizer.json"
CHAT_FORMAT_FILE = "chat_format.json"  # imported runs only: markers and Jinja chat template
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)
# How text is cut into pieces before BPE merges (GPT-2's rule, with two changes for code): a
# line break and the indentation after it form one piece, so each indentation depth can become
# one token; and identifiers keep their underscores and digits (`__init__`, `utf_8`). Runs of
# spaces inside a line stay together as in GPT-2. Measured on held-out standard-library code at
# 2048 tokens: 3.036 -> 3.065 bytes per token; prose is unchanged (3.275 on chitchat).
# A number is one piece per digit (as in Llama): a larger vocabulary would otherwise merge some
# numbers and not others (an 8192-token BPE of the built-in corpus had 25 of the 90 two-digit
# numbers as one token), so the same digit would look different from one number to the next.
PRE_TOKENIZE = (
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}_][\p{L}\p{N}_]*| ?\p{N}| ?[^\s\p{L}\p{N}_]+"
    r"|\n+[ \t]*(?=\S)|\s+(?!\S)|\s+"
)

# BPE training time grows faster than linearly with the length of a pre-tokenized word, so a
# long run without whitespace (base64, minified code, a DNA string) stalls training for minutes;
# for training only, such runs are cut into pieces no longer than this
MAX_TRAIN_RUN = 256
_LONG_RUN = re.compile(rf"\S{{{MAX_TRAIN_RUN + 1},}}")


def bounded_for_training(texts: Iterable[str], counts: dict[str, int]) -> Iterator[str]:
    """The texts, with every run of more than MAX_TRAIN_RUN non-space characters cut into
    pieces of at most that length (each piece yielded alone, so no merge spans a cut);
    counts["cut"] tallies the runs cut."""
    for text in texts:
        if len(text) <= MAX_TRAIN_RUN or not _LONG_RUN.search(text):
            yield text
            continue
        start = 0
        for m in _LONG_RUN.finditer(text):
            counts["cut"] = counts.get("cut", 0) + 1
            if m.start() > start:
                yield text[start : m.start()]
            run = m.group()
            yield from (run[i : i + MAX_TRAIN_RUN] for i in range(0, len(run), MAX_TRAIN_RUN))
            start = m.end()
        if start < len(text):
            yield text[start:]


def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-printable-character map that byte-level BPE uses."""
    alphabet = ByteLevel.alphabet()
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + extra)] = b
            extra += 1
    assert set(mapping) == set(alphabet)
    return mapping


class Tokenizer:
    """Thin wrapper that fixes how chatsmith encodes, decodes and counts bytes.

    `chat_format` is None for chatsmith's own tokenizer (which must hold SPECIAL_TOKENS; the
    FIM markers only if saved after they existed); for a foreign one it is the imported chat
    format (see chatsmith.interop.hf_tokenizer): its markers, stop ids and Jinja chat template.
    """

    def __init__(self, hf: HFTokenizer, chat_format: dict | None = None):
        self.chat_format = chat_format
        added = hf.get_added_tokens_decoder()
        if chat_format is None:
            missing = [t for t in REQUIRED_TOKENS if hf.token_to_id(t) is None]
            if missing:
                raise ChatsmithError(f"tokenizer lacks the special tokens {missing}")
            self.special_ids = frozenset(
                i for i in (hf.token_to_id(t) for t in SPECIAL_TOKENS) if i is not None
            )
        else:
            self.special_ids = frozenset(i for i, t in added.items() if t.special)
        hf.encode_special_tokens = True  # user text never turns into markers
        self.hf = hf
        self.added_text = {i: t.content for i, t in added.items()}
        self.system_id = hf.token_to_id(SYSTEM)
        self.user_id = hf.token_to_id(USER)
        self.assistant_id = hf.token_to_id(ASSISTANT)
        self.mask_id = hf.token_to_id(MASK)
        # None in a tokenizer saved before the FIM markers existed, or a foreign one
        self.fim_prefix_id, self.fim_suffix_id, self.fim_middle_id = (
            hf.token_to_id(t) for t in FIM_TOKENS
        )
        fmt = chat_format or {"document_start_token": BOS, "eos_token": END, "pad_token": PAD}
        self.bos_id = self._marker_id(fmt.get("document_start_token"))  # None: starts bare
        self.end_id = self._marker_id(fmt.get("eos_token"))
        pad = self._marker_id(fmt.get("pad_token"))
        # padding is never attended to or learned, so any id serves when a model has none
        self.pad_id = pad if pad is not None else self.end_id if self.end_id is not None else 0
        self._byte_level = "ByteLevel" in json.dumps(json.loads(hf.to_str()).get("decoder"))

    def _marker_id(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self.hf.token_to_id(token)
        if i is None:
            raise ChatsmithError(f"tokenizer has no token {token!r}")
        return i

    @property
    def has_fim(self) -> bool:
        return self.fim_prefix_id is not None

    @property
    def special_texts(self) -> list[str]:
        """The text of every special token: what a reply must not spell out."""
        return [self.hf.id_to_token(i) for i in sorted(self.special_ids)]

    @property
    def doc_start(self) -> list[int]:
        """Ids that begin a plain-text document (the begin token, where the model has one)."""
        return [] if self.bos_id is None else [self.bos_id]

    @cached_property
    def chat(self) -> ChatTemplate:
        """The chat template of the run this tokenizer belongs to."""
        from chatsmith.chat_template import template_for  # templates build on the tokenizer

        return template_for(self)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end a chat reply, as the run's chat template names them; the first is
        the template's own end-of-turn marker."""
        return self.chat.stop_ids

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; special tokens are dropped."""
        return self.hf.decode([i for i in ids if i not in self.special_ids])

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (empty for special tokens and unused ids)."""
        piece = self.hf.id_to_token(token_id)
        if token_id in self.special_ids or piece is None:
            return b""
        if token_id in self.added_text:
            return self.added_text[token_id].encode()
        if self._byte_level:
            return bytes(_BYTE_DECODER[c] for c in piece)
        # SentencePiece converted to tokenizer.json: "<0x0A>" is a raw byte, "▁" a space
        byte = _SP_BYTE.fullmatch(piece)
        if byte:
            return bytes([int(byte.group(1), 16)])
        return piece.replace("\u2581", " ").encode()

    @cached_property
    def bytes_per_token(self) -> list[int]:
        """UTF-8 byte length of every token id, for the bits-per-byte metric."""
        return [len(self.token_bytes(i)) for i in range(self.vocab_size)]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TOKENIZER_FILE
        write_atomic(path, lambda tmp: self.hf.save(str(tmp)))
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> Tokenizer:
        """Load tokenizer.json; a `chat_format.json` beside it marks an imported tokenizer."""
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        chat_format = None
        fmt_path = path.parent / CHAT_FORMAT_FILE
        if fmt_path.is_file():
            try:
                chat_format = json.loads(fmt_path.read_text())
            except json.JSONDecodeError as e:
                raise ChatsmithError(f"{fmt_path} is corrupt ({e})") from None
        if not path.is_file():
            raise ChatsmithError(f"no tokenizer at {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise ChatsmithError(
                f"cannot read tokenizer {path}: {str(e).splitlines()[0]}"
            ) from None
        return cls(hf, chat_format)

    def save_beside(self, folder: str | Path) -> None:
        """Write this tokenizer (and its chat format, if imported) into a new run folder."""
        self.save(folder)
        if self.chat_format is not None:
            write_json_atomic(Path(folder) / CHAT_FORMAT_FILE, self.chat_format)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        progress: bool = False,
        notify: Callable[[str], None] | None = None,
    ) -> Tokenizer:
        """Train byte-level BPE on an iterator of documents.

        `progress` draws the trainer's progress bars on stderr (in a terminal); `notify`
        receives notes, e.g. that overlong runs without whitespace were cut for training."""
        if vocab_size < MIN_VOCAB:
            raise ChatsmithError(f"vocab size must be at least {MIN_VOCAB}, got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRE_TOKENIZE), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=ByteLevel.alphabet(),
            show_progress=progress and sys.stderr.isatty(),  # bars only make sense live
        )
        counts: dict[str, int] = {}
        hf.train_from_iterator(bounded_for_training(texts, counts), trainer=trainer)
        if counts and notify is not None:
            notify(
                f"note: {counts['cut']:,} run(s) of over {MAX_TRAIN_RUN} characters without "
                f"whitespace were cut into {MAX_TRAIN_RUN}-character pieces for tokenizer training"
            )
        return cls(hf)

    def summary(self) -> dict:
        return {"vocab_size": self.vocab_size, "special_tokens": self.special_texts}


_BYTE_DECODER = _byte_decoder()
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), with special tokens reserved up front.

User text is always encoded with special-token matching switched off, so typing `<|user|>`
yields ordinary byte tokens, never the marker: only code that builds sequences on purpose
(the chat template, document separators) can place a special token.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

from chatsmith.errors import ChatsmithError

BOS = "<|bos|>"  # begins every document; also separates packed documents
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # closes one chat message
MASK = "<|mask|>"  # for masked-LM (encoder) training
SPECIAL_TOKENS = [BOS, PAD, SYSTEM, USER, ASSISTANT, END, MASK]
TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


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
    """Thin wrapper that fixes how chatsmith encodes, decodes and counts bytes."""

    def __init__(self, hf: HFTokenizer):
        missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
        if missing:
            raise ChatsmithError(f"tokenizer lacks the special tokens {missing}")
        hf.encode_special_tokens = True  # user text never turns into markers
        self.hf = hf
        self.bos_id = hf.token_to_id(BOS)
        self.pad_id = hf.token_to_id(PAD)
        self.system_id = hf.token_to_id(SYSTEM)
        self.user_id = hf.token_to_id(USER)
        self.assistant_id = hf.token_to_id(ASSISTANT)
        self.end_id = hf.token_to_id(END)
        self.mask_id = hf.token_to_id(MASK)
        self.special_ids = frozenset(hf.token_to_id(t) for t in SPECIAL_TOKENS)

    @property
    def stop_ids(self) -> tuple[int, int]:
        """Tokens that end a chat reply: `<|end|>`, or `<|bos|>` (a model that skips the end
        marker and starts a new document has finished its reply too)."""
        return (self.end_id, self.bos_id)

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
        """The exact bytes a token stands for (empty for special tokens)."""
        if token_id in self.special_ids:
            return b""
        dec = _BYTE_DECODER
        return bytes(dec[c] for c in self.hf.id_to_token(token_id))

    @cached_property
    def bytes_per_token(self) -> list[int]:
        """UTF-8 byte length of every token id, for the bits-per-byte metric."""
        return [len(self.token_bytes(i)) for i in range(self.vocab_size)]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / TOKENIZER_FILE
        tmp = path.with_suffix(".tmp")
        self.hf.save(str(tmp))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder_or_file: str | Path) -> Tokenizer:
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        if not path.is_file():
            raise ChatsmithError(f"no tokenizer at {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise ChatsmithError(
                f"cannot read tokenizer {path}: {str(e).splitlines()[0]}"
            ) from None
        return cls(hf)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train byte-level BPE on an iterator of documents."""
        if vocab_size < MIN_VOCAB:
            raise ChatsmithError(f"vocab size must be at least {MIN_VOCAB}, got {vocab_size}")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)


_BYTE_DECODER = _byte_decoder()

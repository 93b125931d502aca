"""Read a Hugging Face model folder's tokenizer files into a chatsmith Tokenizer, and write
a run's tokenizer back out in the files transformers reads."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from chatsmith.errors import ChatsmithError
from chatsmith.tokenizer import BOS, END, PAD, Tokenizer


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChatsmithError(f"cannot read {path}: {e}") from None


def _token_text(value) -> str | None:
    """tokenizer_config.json spells a token as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _document_start(hf: HFTokenizer) -> str | None:
    """The token transformers puts before plain text (Llama's <|begin_of_text|>, Mistral's
    <s>), read off the tokenizer's post-processor; None where it adds nothing (Qwen)."""
    bare = hf.encode("a", add_special_tokens=False).ids
    full = hf.encode("a", add_special_tokens=True).ids
    extra = len(full) - len(bare)
    if extra == 1 and full[1:] == bare:
        return hf.id_to_token(full[0])
    return None


def load_hf_tokenizer(folder: Path, model_vocab: int, generative: bool = True) -> Tokenizer:
    """The folder's tokenizer.json with the chat format its other files describe."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ChatsmithError(
            f"{folder} has no tokenizer.json (a SentencePiece tokenizer.model alone is not "
            "read: save the tokenizer once with transformers' save_pretrained to convert it)"
        )
    try:
        hf = HFTokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception on bad JSON
        raise ChatsmithError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    config_path = folder / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one chats
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_path = folder / "chat_template.jinja"
    if jinja_path.is_file():
        template = jinja_path.read_text()
    gen_path = folder / "generation_config.json"
    generation = read_json(gen_path) if gen_path.is_file() else {}
    eos = _token_text(config.get("eos_token"))
    stops = _ids(generation.get("eos_token_id")) or _ids(hf.token_to_id(eos) if eos else None)
    if not stops and generative:  # an encoder only reads: it needs no stop token
        raise ChatsmithError(
            "no stop token: generation_config.json has no eos_token_id and "
            "tokenizer_config.json no eos_token, so a reply could never end"
        )
    fmt = {
        "chat_template": template,
        "bos_token": _token_text(config.get("bos_token")),
        "eos_token": eos,
        "pad_token": _token_text(config.get("pad_token")),
        "unk_token": _token_text(config.get("unk_token")),
        "document_start_token": _document_start(hf),
        "stop_token_ids": stops,
    }
    tok = Tokenizer(hf, fmt)
    if tok.vocab_size > model_vocab:
        raise ChatsmithError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model_vocab} "
            "embeddings: they do not belong together"
        )
    bad = [i for i in stops if not 0 <= i < model_vocab]
    if bad:
        raise ChatsmithError(f"generation_config.json: stop token ids {bad} are outside the vocab")
    return tok


def hf_tokenizer_files(tok: Tokenizer, chat_jinja: str) -> dict[str, str]:
    """tokenizer_config.json and chat_template.jinja contents for an export."""
    fmt = tok.chat_format or {"bos_token": BOS, "eos_token": END, "pad_token": PAD}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": None,
        **{k: fmt.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
    }
    config = {k: v for k, v in config.items() if v is not None}
    config["chat_template"] = chat_jinja  # transformers before 4.49 reads it only from here
    return {
        "tokenizer_config.json": json.dumps(config, indent=2),
        "chat_template.jinja": chat_jinja,
    }

"""Bytes per token on held-out code: GPT-2's pre-tokenizer rule (before) vs chatsmith's (after).

Both tokenizers are byte-level BPE trained the same way on the training files of
builtin:python-stdlib; the figure is UTF-8 bytes of the held-out files per token (higher is
cheaper). The chitchat held-out split is scored too, to show what the rule does to prose.

    python benchmarks/code_tokenizer.py [--vocab-size 2048]
"""

from __future__ import annotations

import argparse
import json

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

from chatsmith.data import chitchat
from chatsmith.data.code import PYTHON_STDLIB, code_files
from chatsmith.tokenizer import SPECIAL_TOKENS, Tokenizer


def gpt2_rule(docs: list[str], vocab_size: int) -> HFTokenizer:
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(docs, trainer=trainer)
    return hf


def bytes_per_token(hf: HFTokenizer, docs: list[str]) -> float:
    n = sum(len(e.ids) for e in hf.encode_batch(docs, add_special_tokens=False))
    return sum(len(d.encode("utf-8")) for d in docs) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-size", type=int, default=2048)
    a = ap.parse_args()
    train = [f.text for f in code_files(PYTHON_STDLIB, None, "train")]
    val = [f.text for f in code_files(PYTHON_STDLIB, None, "val")]
    prose_train, prose_val = chitchat.documents("train"), chitchat.documents("val")
    out = {}
    for name, make in (
        ("before (GPT-2 rule)", lambda d: gpt2_rule(d, a.vocab_size)),
        ("after (chatsmith rule)", lambda d: Tokenizer.train(d, a.vocab_size).hf),
    ):
        out[name] = {
            "code tokenizer, held-out code": bytes_per_token(make(train), val),
            "prose tokenizer, held-out prose": bytes_per_token(make(prose_train), prose_val),
        }
    print(json.dumps({"vocab_size": a.vocab_size, "bytes_per_token": out}, indent=2))


if __name__ == "__main__":
    main()

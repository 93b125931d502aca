"""BERT-family encoders: chatsmith's encoder with BERT switches computes what transformers'
BertModel computes, and mean-pooled embeddings match within 1e-5 (offline: random weights
from a config, a WordPiece tokenizer built locally)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from chatsmith.interop.hf_bert import bert_from_hf, bert_model_config  # noqa: E402
from chatsmith.models import build_model  # noqa: E402

WORDS = (
    "the a cat dog sat on mat hello world how are you today i like my and is was it "
    "good bad red blue big small run ran over under".split()
)
TEXTS = ["hello world", "the cat sat on the mat", "how are you today? i like my dog", "a"]


def hf_config(vocab_size: int = 64, **over):
    base = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    base.update(over)
    return transformers.BertConfig(**base)


def random_bert(config) -> torch.nn.Module:
    """A BertModel whose LayerNorms and biases are random too, so that every weight matters."""
    torch.manual_seed(0)
    model = transformers.BertModel(config, add_pooling_layer=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0.5 if name.endswith("LayerNorm.weight") else 0.0, 0.2)
    return model.eval()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def test_encoder_with_bert_switches_equals_bert_model():
    config = hf_config()
    theirs = random_bert(config)
    cfg = bert_model_config(config.to_dict())
    ours = build_model(cfg).eval()
    ours.load_state_dict(bert_from_hf(theirs.state_dict(), cfg), strict=False)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (3, 17), generator=g)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.hidden(ids, mask.bool())
    real = mask.bool()
    assert (got[real] - want[real]).abs().max() < 1e-5
    assert (mean_pool(got, mask) - mean_pool(want, mask)).abs().max() < 1e-5


def wordpiece_folder(folder: Path) -> Path:
    """A WordPiece tokenizer.json built with the tokenizers library, saved the way
    transformers saves a BERT tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = ["##s", "##ing", "##ed", "?", ".", ","]
    vocab = {t: i for i, t in enumerate(specials + WORDS + pieces)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = transformers.BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    folder = wordpiece_folder(tmp_path_factory.mktemp("bert"))
    size = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    random_bert(hf_config(vocab_size=size)).save_pretrained(folder)
    return folder


def reference_embeddings(folder: Path, texts: list[str]) -> torch.Tensor:
    """transformers + mean pooling over the attention mask, as sentence-transformers does."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"])


def test_imported_bert_folder_embeds_like_transformers(bert_folder, tmp_path):
    from chatsmith.inference.embeddings import embed_texts
    from chatsmith.inference.loading import load_run
    from chatsmith.interop.hf_import import import_hf

    result = import_hf(str(bert_folder), tmp_path / "run", dtype="fp32")
    assert result.family == "bert" and result.cfg.arch == "encoder"
    ours, tokens = embed_texts(load_run(result.out, "cpu"), TEXTS, batch_size=2)
    want = reference_embeddings(bert_folder, TEXTS)
    assert (ours - want).abs().max() < 1e-5
    assert (ours * want).sum(-1).min() >= 0.99999
    tok = transformers.AutoTokenizer.from_pretrained(bert_folder)
    assert tokens == sum(len(tok(t)["input_ids"]) for t in TEXTS)  # [CLS] ... [SEP] each


def test_embed_cli_on_an_imported_bert(bert_folder, tmp_path):
    from conftest import run_cli

    run = tmp_path / "bert-run"
    r = run_cli("import", str(bert_folder), "--out", str(run))
    assert r.returncode == 0, r.stderr
    r = run_cli("embed", str(run), "--text", TEXTS[1], "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    got = torch.tensor(json.loads(r.stdout)["data"][0]["embedding"])
    assert torch.allclose(got, reference_embeddings(bert_folder, TEXTS[1:2])[0], atol=1e-5)

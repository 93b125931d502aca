"""BERT-family encoders (BertModel layout, as sentence-transformers models use it) <-> an
encoder run: config.json and tensor names.

The BERT block is the same chatsmith block with other switches: LayerNorm with biases, post-norm,
learned absolute positions and token types, a GELU MLP and biases on every projection. Keys and
values are fused (`attn.kv`, keys first). The pooler and any masked-LM head are not read: sentence
embeddings are the mean of the final token states.
"""

from __future__ import annotations

import torch

from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig

Tensors = dict[str, torch.Tensor]
FAMILY = "bert"

_LAYER_RENAMES = {
    "attention.self.query": "attn.q",
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up",
    "output.dense": "mlp.down",
    "output.LayerNorm": "mlp_norm",
}
_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "stack.embed.weight",
    "embeddings.token_type_embeddings.weight": "stack.positional.learned.types.weight",
    "embeddings.LayerNorm.weight": "stack.positional.input_norm.weight",
    "embeddings.LayerNorm.bias": "stack.positional.input_norm.bias",
}
_POSITIONS = "embeddings.position_embeddings.weight"
_IGNORED = ("pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids")


def _need(cfg: dict, key: str):
    if key not in cfg:
        raise ChatsmithError(f"config.json lacks {key!r}")
    return cfg[key]


def bert_model_config(cfg: dict, max_seq_len: int | None = None) -> ModelConfig:
    """The encoder ModelConfig that computes what a BERT config.json describes."""
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ChatsmithError(f"config.json: hidden_act={act!r} is not supported (only gelu)")
    kind = cfg.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ChatsmithError(f"config.json: position_embedding_type={kind!r} is not supported")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise ChatsmithError("config.json: a BERT decoder is not supported, only the encoder")
    positions = int(_need(cfg, "max_position_embeddings"))
    context = positions if max_seq_len is None else max_seq_len
    if not 1 <= context <= positions:
        raise ChatsmithError(
            f"--max-seq-len {context} must be between 1 and the model's {positions} positions"
        )
    n_head = int(_need(cfg, "num_attention_heads"))
    return ModelConfig(
        arch="encoder",
        vocab_size=int(_need(cfg, "vocab_size")),
        n_layer=int(_need(cfg, "num_hidden_layers")),
        n_head=n_head,
        n_kv_head=n_head,
        d_model=int(_need(cfg, "hidden_size")),
        d_ff=int(_need(cfg, "intermediate_size")),
        max_seq_len=context,
        norm="layer",
        norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        post_norm=True,
        positions="learned",
        token_types=int(cfg.get("type_vocab_size", 2)),
        mlp="gelu",
        bias=True,
        tie_embeddings=True,  # the masked-LM head (unused for embeddings) reads the embeddings
    )


def bert_from_hf(hf: Tensors, cfg: ModelConfig) -> Tensors:
    """Encoder weights from BertModel ones (a `bert.` prefix, as BertForMaskedLM has, is
    accepted); a tensor the encoder does not have, or one it lacks, is an error."""
    prefix = "bert." if any(k.startswith("bert.") for k in hf) else ""
    hf = {k[len(prefix) :]: v for k, v in hf.items() if k.startswith(prefix)}
    hf = {k: v for k, v in hf.items() if not k.startswith(_IGNORED)}
    ours: Tensors = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise ChatsmithError(f"the weights lack {prefix}{name}")
        used.add(name)
        return hf[name]

    for theirs, mine in _EMBEDDINGS.items():
        if mine.startswith("stack.positional.learned.types") and not cfg.token_types:
            continue
        ours[mine] = take(theirs)
    ours["stack.positional.learned.pos.weight"] = take(_POSITIONS)[: cfg.max_seq_len]
    for i in range(cfg.n_layer):
        src, dst = f"encoder.layer.{i}.", f"stack.blocks.{i}."
        for theirs, mine in _LAYER_RENAMES.items():
            for part in ("weight", "bias"):
                ours[f"{dst}{mine}.{part}"] = take(f"{src}{theirs}.{part}")
        for part in ("weight", "bias"):
            keys = take(f"{src}attention.self.key.{part}")
            values = take(f"{src}attention.self.value.{part}")
            ours[f"{dst}attn.kv.{part}"] = torch.cat([keys, values], dim=0)
    extra = sorted(set(hf) - used)
    if extra:
        raise ChatsmithError(f"the weights hold tensors a BERT encoder does not have: {extra[:3]}")
    return ours

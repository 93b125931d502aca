"""`chatsmith import`: a Hugging Face model folder becomes an ordinary chatsmith run folder.

The run is assembled in a hidden temporary folder beside the destination and renamed into
place only when every check has passed and every file is written, so a failed import leaves
nothing behind.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from chatsmith.checkpoint import RUN_FILE, save_weights_checkpoint
from chatsmith.errors import ChatsmithError
from chatsmith.files import write_json_atomic
from chatsmith.interop.hf_bert import FAMILY as BERT
from chatsmith.interop.hf_bert import bert_from_hf, bert_model_config
from chatsmith.interop.hf_config import model_config_from_hf
from chatsmith.interop.hf_tokenizer import load_hf_tokenizer, read_json
from chatsmith.interop.hf_weights import from_hf
from chatsmith.models import ModelConfig, build_model

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
HUB_PREFIX = "hf:"


@dataclass
class ImportResult:
    out: Path
    cfg: ModelConfig
    family: str
    n_params: int
    tokenizer_vocab: int


def resolve_source(source: str) -> Path:
    """A local folder, or `hf:NAME` fetched with huggingface_hub where a hub is reachable."""
    if not source.startswith(HUB_PREFIX):
        return Path(source)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ChatsmithError(
            "hf:NAME needs huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        patterns = ["*.json", "*.safetensors", "*.jinja"]
        return Path(snapshot_download(source[len(HUB_PREFIX) :], allow_patterns=patterns))
    except Exception as e:  # network, authentication and missing-repo errors alike
        raise ChatsmithError(f"cannot download {source}: {str(e).splitlines()[0]}") from None


def _shard_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ChatsmithError(f"{index} has no weight_map")
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise ChatsmithError(
        f"{folder} has no model.safetensors (pickled pytorch_model.bin files are not read)"
    )


def read_shards(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in _shard_files(folder):
        if not path.is_file():
            raise ChatsmithError(f"weight shard {path} is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ChatsmithError(f"weight shard {path} is corrupt or truncated ({e})") from None
    return tensors


def _check_shapes(weights: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    with torch.device("meta"):  # shapes only: no memory for a second copy of the model
        expected = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    for name, tensor in weights.items():
        if name not in expected:
            raise ChatsmithError(f"internal: no parameter {name} in the model")
        if tensor.shape != expected[name]:
            raise ChatsmithError(
                f"config.json and the weights disagree: {name} is {tuple(tensor.shape)}, "
                f"the config implies {tuple(expected[name])}"
            )


def _target_dtype(weights: dict[str, torch.Tensor], dtype: str) -> torch.dtype:
    if dtype == "auto":  # keep bf16 checkpoints bf16 (half the disk); anything else fp32
        found = {t.dtype for t in weights.values()}
        return torch.bfloat16 if found == {torch.bfloat16} else torch.float32
    if dtype not in DTYPES:
        raise ChatsmithError(f"--dtype must be auto, bf16 or fp32, not {dtype!r}")
    return DTYPES[dtype]


def import_hf(
    source: str, out: str | Path, max_seq_len: int | None = None, dtype: str = "auto"
) -> ImportResult:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ChatsmithError(f"{out} already exists: import writes a new run folder")
    folder = resolve_source(source)
    if not folder.is_dir():
        raise ChatsmithError(f"{folder} is not a folder")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ChatsmithError(f"{folder} has no config.json: not a Hugging Face model folder")
    hf_config = read_json(config_path)
    if hf_config.get("model_type") == BERT:  # an encoder: embeddings, not generation
        cfg, convert = bert_model_config(hf_config, max_seq_len), bert_from_hf
    else:
        cfg, convert = model_config_from_hf(hf_config, max_seq_len), from_hf
    tok = load_hf_tokenizer(folder, cfg.vocab_size, generative=cfg.arch != "encoder")
    weights = convert(read_shards(folder), cfg)
    _check_shapes(weights, cfg)
    target = _target_dtype(weights, dtype)
    weights = {k: v.to(target).contiguous() for k, v in weights.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tok.save_beside(tmp)
        save_weights_checkpoint(tmp, 0, weights, cfg)
        info = {
            "stage": "import",
            "source": source,
            "family": hf_config["model_type"],
            "model": cfg.to_dict(),
            "hf_config": hf_config,
        }
        write_json_atomic(tmp / RUN_FILE, info)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_params = sum(t.numel() for t in weights.values())
    return ImportResult(out, cfg, hf_config["model_type"], n_params, tok.vocab_size)

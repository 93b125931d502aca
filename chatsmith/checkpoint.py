"""Run folders and checkpoints: safetensors for tensors, JSON for everything else, no pickle.

A run folder looks like this:

    RUN/run.json               stage, model config, training settings
    RUN/tokenizer.json         Hugging Face tokenizer
    RUN/metrics.jsonl          one JSON object per logged step or evaluation
    RUN/checkpoints/step_N/    model.safetensors; state.safetensors + state.json (optimizer,
                               RNG, data position)
    RUN/latest                 name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed into place, and `latest` is
replaced atomically afterwards, so a crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from chatsmith.errors import ChatsmithError
from chatsmith.models import ModelConfig
from chatsmith.tokenizer import Tokenizer

RUN_FILE = "run.json"
LATEST_FILE = "latest"
CHECKPOINTS = "checkpoints"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _split_tree(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors`, leaving a JSON-able skeleton."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {
            "__dict__": [[k, _split_tree(v, f"{prefix}.{k}", tensors)] for k, v in tree.items()]
        }
    if isinstance(tree, (list, tuple)):
        return [_split_tree(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]
    return tree


def _join_tree(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: _join_tree(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [_join_tree(v, tensors) for v in skeleton]
    return skeleton


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ChatsmithError(f"checkpoint file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ChatsmithError(f"checkpoint {path} is corrupt or truncated ({e})") from None


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_config: ModelConfig
    state: dict  # training state: optimizer, RNG, data position, ... (tensors restored)

    def model_weights(self) -> dict[str, torch.Tensor]:
        return _load_safetensors(self.path / "model.safetensors")


def save_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, cfg: ModelConfig, state: dict, keep_last: int
) -> Path:
    # save_model keeps one copy of tied weights (embedding = LM head); load_model re-ties them
    return _commit_checkpoint(
        run_dir, step, cfg, state, keep_last, lambda path: save_model(model, path)
    )


def save_weights_checkpoint(
    run_dir: Path, step: int, weights: dict[str, torch.Tensor], cfg: ModelConfig
) -> Path:
    """A checkpoint of plain named weights and no training state (an imported model)."""
    return _commit_checkpoint(run_dir, step, cfg, {}, 1, lambda path: save_file(weights, path))


def _commit_checkpoint(
    run_dir: Path, step: int, cfg: ModelConfig, state: dict, keep_last: int, write_model
) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final, tmp = root / name, root / f".tmp_{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_model(str(tmp / "model.safetensors"))
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tree(state, "s", tensors)
    save_file(tensors, str(tmp / "state.safetensors"))
    write_json_atomic(
        tmp / "state.json", {"step": step, "model_config": cfg.to_dict(), "state": skeleton}
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    (Path(run_dir) / (LATEST_FILE + ".tmp")).write_text(name)
    os.replace(Path(run_dir) / (LATEST_FILE + ".tmp"), Path(run_dir) / LATEST_FILE)
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step_"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ChatsmithError(f"run folder {run_dir} does not exist")
    latest = run_dir / LATEST_FILE
    if not latest.is_file():
        raise ChatsmithError(f"{run_dir} has no checkpoint yet (no '{LATEST_FILE}' file)")
    path = run_dir / CHECKPOINTS / latest.read_text().strip()
    if not path.is_dir():
        raise ChatsmithError(f"checkpoint {path} named by {latest} is missing")
    return path


def load_checkpoint(run_dir: Path, with_state: bool = True) -> Checkpoint:
    path = latest_checkpoint_dir(run_dir)
    try:
        meta = json.loads((path / "state.json").read_text())
        cfg = ModelConfig.from_dict(meta["model_config"])
        step = int(meta["step"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ChatsmithError(
            f"checkpoint {path} is corrupt: cannot read state.json ({e})"
        ) from None
    state = {}
    if with_state:
        state = _join_tree(meta["state"], _load_safetensors(path / "state.safetensors"))
    return Checkpoint(path, step, cfg, state)


def load_model_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    path = ckpt.path / "model.safetensors"
    if not path.is_file():
        raise ChatsmithError(f"checkpoint file {path} is missing")
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ChatsmithError(f"checkpoint {path} is corrupt or truncated ({e})") from None
    except RuntimeError as e:  # shapes differ from the config
        raise ChatsmithError(f"checkpoint {path} does not fit its model config: {e}") from None
    if missing or unexpected:
        raise ChatsmithError(
            f"checkpoint {ckpt.path} does not fit its model config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def read_run_info(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ChatsmithError(f"{run_dir} is not a chatsmith run (no {RUN_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ChatsmithError(f"{path} is corrupt ({e})") from None


def load_run_tokenizer(run_dir: Path, cfg: ModelConfig) -> Tokenizer:
    tok = Tokenizer.load(Path(run_dir))
    # imported models may pad their embedding past the tokenizer (Qwen2: rows nobody samples)
    padded = tok.chat_format is not None and tok.vocab_size < cfg.vocab_size
    if tok.vocab_size != cfg.vocab_size and not padded:
        raise ChatsmithError(
            f"tokenizer in {run_dir} has {tok.vocab_size} tokens but the model expects "
            f"{cfg.vocab_size}: they do not belong together"
        )
    return tok

"""Run folders and checkpoints: safetensors for tensors, JSON for everything else, no pickle.

A run folder looks like this:

    RUN/run.json               stage, model config, training settings
    RUN/tokenizer.json         Hugging Face tokenizer
    RUN/metrics.jsonl          one JSON object per logged step or evaluation
    RUN/checkpoints/step_N/    model.safetensors; state.safetensors + state.json (optimizer,
                               RNG, data position)
    RUN/latest                 name of the newest complete checkpoint

A checkpoint is written into a temporary folder and renamed to a name no folder has, `latest`
is then replaced atomically, and only after that are older folders deleted. A folder that
`latest` names is never touched, so a crash at any instant leaves a loadable checkpoint. When a
step is saved twice (a final save on a save-every step, or resuming a finished run), the new
copy gets a revision suffix (`step_N.1`) instead of replacing the folder `latest` names.

Everything read back is checked: JSON types and bounds, `latest` naming a checkpoint inside
the run, finite weights, and the tokenizer the model was saved with (by fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from chatsmith.errors import ChatsmithError
from chatsmith.files import write_json_atomic, write_text_atomic
from chatsmith.models import ModelConfig
from chatsmith.tokenizer import TOKENIZER_FILE, Tokenizer
from chatsmith.validation import Field, check_record

RUN_FILE = "run.json"
LATEST_FILE = "latest"
CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step_(\d{8,})(?:\.(\d+))?")  # step_N or a revision step_N.R
STATE_FIELDS = {
    "step": Field(int, lo=0, hi=10**12),
    "model_config": Field(dict),
    "state": Field(dict),
    "tokenizer_sha256": Field(str, optional=True),  # absent in runs saved before it existed
}
RUN_FIELDS = {
    "stage": Field(str, optional=True),
    "args": Field(dict, optional=True),
    "flags": Field(dict, optional=True),
    "data": Field(dict, optional=True),
}


def read_json(path: Path, what: str) -> Any:
    """Parse a run-folder JSON file; any unreadable, non-UTF-8 or malformed file is one error."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ChatsmithError(f"{what} {path} is missing") from None
    except OSError as e:
        raise ChatsmithError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ChatsmithError(
            f"{what} {path} is corrupt: not UTF-8 (bad byte at offset {e.start})"
        ) from None
    except json.JSONDecodeError as e:
        raise ChatsmithError(f"{what} {path} is corrupt: {e}") from None


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


def _check_finite(tensors: Iterable[tuple[str, torch.Tensor]], path: Path) -> None:
    """NaN or infinite weights would load fine and then produce garbage: refuse them."""
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ChatsmithError(f"checkpoint {path} holds non-finite values (NaN/inf) in {name}")


def tokenizer_fingerprint(folder: Path) -> str | None:
    """sha256 of the folder's tokenizer.json in canonical JSON form (None if there is none),
    so that re-indenting the file does not change it but any other tokenizer does."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return None
    canonical = json.dumps(
        read_json(path, "tokenizer"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Checkpoint:
    path: Path
    step: int
    model_config: ModelConfig
    state: dict  # training state: optimizer, RNG, data position, ... (tensors restored)

    @property
    def is_sharded(self) -> bool:
        """Written by an FSDP2 run: model and optimizer state in torch.distributed.checkpoint
        shards (a final checkpoint also has the whole model as model.safetensors)."""
        return (self.path / "dcp").is_dir()

    def model_weights(self) -> dict[str, torch.Tensor]:
        weights = _load_safetensors(self.path / "model.safetensors")
        _check_finite(weights.items(), self.path)
        return weights


def _step_of(name: str) -> int | None:
    m = CHECKPOINT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def _unused_name(root: Path, step: int) -> str:
    """step_N, or the first free revision step_N.R when step N was saved before."""
    name, revision = f"step_{step:08d}", 0
    while (root / name).exists():
        revision += 1
        name = f"step_{step:08d}.{revision}"
    return name


def begin_checkpoint(run_dir: Path, step: int, create: bool = True) -> tuple[Path, Path]:
    """(final folder, empty temporary folder to write it in) for the checkpoint of `step`.
    The final name is one no folder has yet (step_N, or step_N.R when step N was saved
    before), so writing never touches the checkpoint `latest` names. `create=False` only names
    them (for the processes that write into another's folder; every rank computes the same
    name, since final folders appear only at a commit, between barriers)."""
    root = Path(run_dir) / CHECKPOINTS
    name = _unused_name(root, step)
    final, tmp = root / name, root / f".tmp_{name}"
    if create:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp_*"):  # left by a crash mid-write; `latest` never names one
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    return final, tmp


def write_state(run_dir: Path, folder: Path, step: int, cfg: ModelConfig, state: dict) -> None:
    """The training state: tensors to state.safetensors, the rest (with the run's tokenizer
    fingerprint) to state.json."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_tree(state, "s", tensors)
    save_file(tensors, str(folder / "state.safetensors"))
    meta = {"step": step, "model_config": cfg.to_dict(), "state": skeleton}
    fingerprint = tokenizer_fingerprint(Path(run_dir))
    if fingerprint is not None:
        meta["tokenizer_sha256"] = fingerprint
    write_json_atomic(folder / "state.json", meta)


def commit_checkpoint(run_dir: Path, final: Path, tmp: Path, keep_last: int) -> Path:
    """Rename the written checkpoint into place, point `latest` at it, then drop old ones."""
    os.replace(tmp, final)  # `final` names no folder yet, so no checkpoint is replaced here
    write_text_atomic(Path(run_dir) / LATEST_FILE, final.name)
    _prune(final.parent, final.name, keep_last)
    return final


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
    final, tmp = begin_checkpoint(run_dir, step)
    write_model(str(tmp / "model.safetensors"))
    write_state(run_dir, tmp, step, cfg, state)
    return commit_checkpoint(run_dir, final, tmp, keep_last)


def _prune(root: Path, current: str, keep_last: int) -> None:
    """Delete checkpoints of all but the newest `keep_last` steps, and older copies of the
    current step; never the one `latest` names (`current`)."""
    saved = [(step, p) for p in root.iterdir() if (step := _step_of(p.name)) is not None]
    kept_steps = sorted({step for step, _ in saved})[-keep_last:]
    current_step = _step_of(current)
    for step, path in saved:
        if path.name != current and (step == current_step or step not in kept_steps):
            shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ChatsmithError(f"run folder {run_dir} does not exist")
    latest = run_dir / LATEST_FILE
    if not latest.is_file():
        raise ChatsmithError(f"{run_dir} has no checkpoint yet (no '{LATEST_FILE}' file)")
    name = latest.read_bytes().decode("utf-8", errors="replace").strip()
    root = run_dir / CHECKPOINTS
    path = root / name
    # only a plain checkpoint name inside this run: `latest` must not lead anywhere else
    if _step_of(name) is None or path.resolve().parent != root.resolve():
        raise ChatsmithError(
            f"{latest} is corrupt: it names {name[:80]!r}, not a checkpoint inside {root}"
        )
    if not path.is_dir():
        raise ChatsmithError(f"checkpoint {path} named by {latest} is missing")
    return path


def load_checkpoint(run_dir: Path, with_state: bool = True) -> Checkpoint:
    """The run's latest checkpoint, checked; refused if the run's tokenizer.json is not the
    one the model was saved with."""
    path = latest_checkpoint_dir(run_dir)
    where = f"checkpoint {path}/state.json"
    meta = check_record(read_json(path / "state.json", "checkpoint file"), STATE_FIELDS, where)
    try:
        cfg = ModelConfig.from_dict(meta["model_config"])
    except ChatsmithError as e:
        raise ChatsmithError(f"{where} is invalid: {e}") from None
    saved_tok = meta.get("tokenizer_sha256")
    if saved_tok is not None and tokenizer_fingerprint(run_dir) not in (None, saved_tok):
        raise ChatsmithError(
            f"{Path(run_dir) / TOKENIZER_FILE} is not the tokenizer this model was trained "
            "with (its fingerprint differs): copy back the run's own tokenizer.json"
        )
    state = {}
    if with_state:
        tensors = _load_safetensors(path / "state.safetensors")
        try:
            state = _join_tree(meta["state"], tensors)
        except (KeyError, TypeError, ValueError):
            raise ChatsmithError(f"{where} does not match state.safetensors") from None
    return Checkpoint(path, meta["step"], cfg, state)


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
    _check_finite(model.state_dict().items(), ckpt.path)


def read_run_info(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise ChatsmithError(f"{run_dir} is not a chatsmith run (no {RUN_FILE})")
    return check_record(read_json(path, "run file"), RUN_FIELDS, str(path))


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


def data_fingerprint(**parts: torch.Tensor | Iterable[Sequence[int]]) -> dict:
    """Sizes and one sha256 of the tokens a run trains and evaluates on, stored in run.json so
    that a resume can tell whether the data changed. Each part is a token tensor or a list of
    token sequences (whose boundaries count too); hashing tokens costs about a second per GB."""
    h = hashlib.sha256()
    sizes = {}
    for name, part in parts.items():
        h.update(name.encode())
        seqs = [part] if isinstance(part, torch.Tensor) else part
        n = 0
        for seq in seqs:
            if isinstance(seq, torch.Tensor):
                kind, data = str(seq.dtype), memoryview(seq.contiguous().numpy()).cast("B")
            else:
                kind, data = "int64", memoryview(array("q", seq)).cast("B")
            h.update(f"{kind}:{len(data)};".encode())
            h.update(data)
            n += len(seq)
        sizes[f"{name}_tokens"] = n
    return {**sizes, "sha256": h.hexdigest()}


def check_data_unchanged(
    run_dir: Path, fingerprint: dict | None, allow_change: bool, warn=print
) -> None:
    """On resume: refuse (or, if allowed, warn) when the data differs from the run's start.
    Runs saved before fingerprints existed resume as before."""
    saved = read_run_info(run_dir).get("data")
    if saved is None or fingerprint is None or saved == fingerprint:
        return

    def sizes(fp: dict) -> str:
        return ", ".join(f"{fp[k]} {k.replace('_', ' ')}" for k in sorted(fp) if k != "sha256")

    msg = (
        f"the data differs from the data {run_dir} started with ({sizes(saved)} then, "
        f"{sizes(fingerprint)} now), so resuming would not continue the same run"
    )
    if not allow_change:
        raise ChatsmithError(f"{msg}; give --allow-data-change to go on anyway")
    warn(f"warning: {msg}; going on because of --allow-data-change")

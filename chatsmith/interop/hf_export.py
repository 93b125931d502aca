"""`chatsmith export RUN --to hf OUT`: a decoder run as a Hugging Face model folder.

OUT gets config.json (LlamaForCausalLM layout, or Qwen2/Qwen3 for imported models that need
their biases or q/k norms), generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json and chat_template.jinja. The folder is written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from chatsmith.checkpoint import load_checkpoint, load_run_tokenizer, read_run_info
from chatsmith.errors import ChatsmithError
from chatsmith.interop.hf_config import export_family, hf_config_from_model
from chatsmith.interop.hf_tokenizer import hf_tokenizer_files
from chatsmith.interop.hf_weights import to_hf

FORMATS = ("hf",)


def export_run(run: str | Path, out: str | Path, to: str = "hf") -> tuple[Path, str]:
    """Write `run`'s latest checkpoint to `out`; returns (out, the HF model_type written)."""
    if to not in FORMATS:
        raise ChatsmithError(
            f"--to {to!r} is not a known format (choose from {', '.join(FORMATS)})"
        )
    run, out = Path(run), Path(out)
    read_run_info(run)
    ckpt = load_checkpoint(run, with_state=False)
    cfg = ckpt.model_config
    family = export_family(cfg)  # refuses encoder and encoder-decoder runs
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ChatsmithError(f"{out} already exists and is not empty")
    tok = load_run_tokenizer(run, cfg)
    weights = to_hf(ckpt.model_weights(), cfg)
    stops = list(tok.stop_ids)
    special = {"bos_token_id": tok.bos_id, "eos_token_id": stops, "pad_token_id": tok.pad_id}
    config = hf_config_from_model(cfg, special)
    config["torch_dtype"] = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    generation = {**special, "do_sample": False}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.exporting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        tok.save(tmp)
        for name, text in hf_tokenizer_files(tok, tok.chat.jinja()).items():
            (tmp / name).write_text(text)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, family

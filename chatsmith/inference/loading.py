"""Load a run folder's latest checkpoint for inference: model, tokenizer and engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chatsmith.checkpoint import (
    load_checkpoint,
    load_model_weights,
    load_run_tokenizer,
    read_run_info,
)
from chatsmith.errors import ChatsmithError
from chatsmith.inference.engine import Engine
from chatsmith.models import ModelConfig, build_model
from chatsmith.runtime import resolve_device
from chatsmith.tokenizer import Tokenizer


@dataclass
class LoadedRun:
    path: Path
    model: nn.Module
    tokenizer: Tokenizer
    cfg: ModelConfig
    info: dict
    step: int

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def is_code_model(self) -> bool:
        """Pretrained on source code (completes code; has never seen a conversation)."""
        return self.info.get("kind") == "code"

    def check_chat(self) -> None:
        if self.is_code_model:
            raise ChatsmithError(
                f"{self.name} is a code model: it completes code and cannot chat; use "
                f'chatsmith complete {self.path} --prefix "def add(a, b):\\n"'
            )

    def engine(self, max_batch: int = 1, compile: bool = False) -> Engine:
        """`compile`: the compiled decode step (see `Engine`): faster tokens after a one-off
        compile, for a session or server that lives long."""
        if self.cfg.arch == "encoder":
            raise ChatsmithError(
                f"{self.path} is an encoder run: it embeds text (chatsmith embed {self.path}) "
                "and cannot chat or generate"
            )
        return Engine(
            self.model,
            self.tokenizer.stop_ids,
            max_batch=max_batch,
            cuda_graph=True,
            start_id=self.tokenizer.bos_id,
            compile=compile,
        )


def load_run(run_dir: str | Path, device: str | torch.device = "auto") -> LoadedRun:
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    ckpt = load_checkpoint(run_dir, with_state=False)
    tok = load_run_tokenizer(run_dir, ckpt.model_config)
    model = build_model(ckpt.model_config)
    load_model_weights(model, ckpt)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    # bf16 weights on CUDA halve memory traffic in decoding; CPU keeps float32
    model = model.to(dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32).eval()
    return LoadedRun(run_dir, model, tok, ckpt.model_config, info, ckpt.step)

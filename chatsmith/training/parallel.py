"""Training on several processes: PyTorch's own DDP and FSDP2 applied around an untouched model.

`torchrun` starts one process per device and sets WORLD_SIZE, RANK and LOCAL_RANK; a
ParallelPlan reads them, joins the process group (NCCL on CUDA, gloo on CPU) and offers the
training loop a few hooks: shard or wrap the model, keep gradient sync off between
micro-batches, weigh each rank's loss so that N processes compute exactly the one-process
gradient, agree on the clock (so the schedule and the time-budget stop are the same on every
rank), and read and write checkpoints. In one process every hook is a no-op, so the single
process path is today's path.

FSDP2 checkpoints are written with torch.distributed.checkpoint: each rank writes its own
shards, and the files can be read back by any number of processes (DCP reshards on load).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from chatsmith.errors import ChatsmithError
from chatsmith.models import IGNORE_INDEX
from chatsmith.models.layers import Block

PARALLEL_MODES = ("ddp", "fsdp")
DCP_DIR = "dcp"  # inside a checkpoint folder: the sharded model and optimizer state
# a collective that waits longer than this for a rank (dead or stuck) raises instead of hanging
TIMEOUT = timedelta(seconds=float(os.environ.get("CHATSMITH_DIST_TIMEOUT", "600")))
# dense bf16 peak of common accelerators, for the model-FLOPs-utilisation figure
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@dataclass
class ParallelPlan:
    """How this process takes part in training; mode is 'single', 'ddp' or 'fsdp'."""

    mode: str = "single"
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    activation_checkpointing: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.mode != "single"

    # -- model -------------------------------------------------------------------------------

    def prepare(self, model: nn.Module) -> nn.Module:
        """Checkpoint activations and (FSDP2) shard every block, then the root, in place."""
        blocks = [m for m in model.modules() if isinstance(m, Block)]
        if self.activation_checkpointing:
            for block in blocks:
                _checkpoint_activations(block)
        if self.mode == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            policy = MixedPrecisionPolicy()
            if self.device.type == "cuda":  # bf16 compute and all-gathers, fp32 gradient sums
                policy = MixedPrecisionPolicy(
                    param_dtype=torch.bfloat16, reduce_dtype=torch.float32
                )
            for block in blocks:
                fully_shard(block, mesh=mesh, mp_policy=policy)
            fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def forward_model(self, model: nn.Module) -> nn.Module:
        """What the training step calls: DDP's wrapper (it all-reduces the gradients)."""
        if self.mode != "ddp":
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # the model's buffers (rotary tables) are constants: nothing to broadcast each step
        params = inspect.signature(DistributedDataParallel).parameters
        quiet = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        return DistributedDataParallel(model, device_ids=ids, **{quiet: False})

    def grad_sync(self, fwd_model: nn.Module, last_micro_batch: bool):
        """Sync gradients on the last micro-batch of a step only."""
        if self.mode == "ddp" and not last_micro_batch:
            return fwd_model.no_sync()
        if self.mode == "fsdp":
            fwd_model.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()

    # -- numbers every rank must agree on ----------------------------------------------------

    def weigh_loss(self, loss: torch.Tensor, batch: dict) -> torch.Tensor:
        """This rank's share of the global mean loss, scaled for DDP/FSDP's gradient averaging.

        Each rank's loss is a mean over its own n targets (those not IGNORE_INDEX); the
        one-process loss is the mean over all N of them. loss * n * world / N, averaged over
        ranks as the gradients are, is exactly that.
        """
        if not self.distributed or "y" not in batch:
            return loss
        n = (batch["y"] != IGNORE_INDEX).sum().to(torch.float64).reshape(1)
        total = n.clone()
        dist.all_reduce(total)
        return loss * (n * self.world / total).to(loss.dtype).squeeze(0)

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss averaged over ranks, left on the device (nothing waits for it)."""
        if not self.distributed:
            return loss
        total = loss.detach().to(torch.float64).reshape(1)
        dist.all_reduce(total)
        return (total / self.world).squeeze(0)

    def reduce_step(self, tokens: int, elapsed: float) -> tuple[int, float]:
        """(summed tokens, slowest rank's clock): the step's figures as one process would see
        them. Every rank then takes the same schedule and the same stop decision."""
        if not self.distributed:
            return tokens, elapsed
        sums = torch.tensor([float(tokens)], dtype=torch.float64, device=self.device)
        clock = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        dist.all_reduce(clock, op=dist.ReduceOp.MAX)
        return int(sums[0]), float(clock[0])

    def grad_norm(self, norm: torch.Tensor) -> float:
        from torch.distributed.tensor import DTensor

        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _checkpoint_activations(block: nn.Module) -> None:
    """Recompute the block's activations in the backward pass instead of keeping them.

    The forward is replaced on the instance, so parameter names (and checkpoints) are unchanged.
    """
    from torch.utils.checkpoint import checkpoint

    inner = block.forward

    def forward(*args, **kwargs):
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward


def plan_from_env(
    parallel: str | None, device: torch.device, activation_checkpointing: bool = False
) -> ParallelPlan:
    """The plan for this process from torchrun's environment; joins the process group.

    Without torchrun (no WORLD_SIZE) training runs in one process, unless `parallel` is 'fsdp',
    which then shards over a group of one (the same checkpoints as a multi-process FSDP run).
    """
    if parallel is not None and parallel not in PARALLEL_MODES:
        raise ChatsmithError(f"unknown --parallel {parallel!r}; choose from {PARALLEL_MODES}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1 and parallel != "fsdp":
        return ParallelPlan("single", 0, 1, device, activation_checkpointing)
    if device.type not in ("cpu", "cuda"):
        raise ChatsmithError(f"several processes need CUDA or CPU devices, not {device.type}")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=TIMEOUT, device_id=_device_id(device))
        else:  # one process, no torchrun: a group of one needs no rendezvous
            store = dist.HashStore()
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=TIMEOUT)
    return ParallelPlan(parallel or "ddp", rank, world, device, activation_checkpointing)


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of one accelerator, when it is a known one (for MFU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


# -- FSDP2 checkpoints ---------------------------------------------------------------------------


def save_sharded(path: Path, model: nn.Module, optimizers: list) -> None:
    """Every rank writes its shards of the model and the optimizers under `path`/dcp."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizers)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / DCP_DIR))


def load_sharded(path: Path, model: nn.Module, optimizers: list) -> None:
    """Read a sharded checkpoint into a model sharded over any number of processes (or none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizers)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with warnings.catch_warnings():  # "loading in a single process" is what we mean
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    except Exception as e:  # DCP raises CheckpointException and friends
        raise ChatsmithError(f"cannot read sharded checkpoint {path}: {str(e)[:300]}") from None
    set_state_dict(
        model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )


def load_full_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Whole weights (a one-process checkpoint) into a model already sharded by FSDP2: each
    rank keeps its own shard. A tied weight is saved once, under one of its names."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    first: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        (tied.add(name) if id(p) in first else first.setdefault(id(p), name))
    options = StateDictOptions(full_state_dict=True, strict=False)
    missing, unexpected = set_model_state_dict(model, tensors, options=options)
    missing = set(missing) - tied
    if missing or unexpected:
        raise ChatsmithError(
            f"checkpoint weights do not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (empty on other ranks), for model.safetensors."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def shard_optimizer_state(optimizers: list) -> None:
    """After loading a one-process optimizer state into FSDP2 optimizers: cut each full-size
    state tensor to this rank's shard of its parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for opt in optimizers:
        for p, state in opt.state.items():
            if not isinstance(p, DTensor):
                continue
            for k, v in state.items():
                if (
                    isinstance(v, torch.Tensor)
                    and not isinstance(v, DTensor)
                    and v.shape == p.shape
                ):
                    state[k] = distribute_tensor(
                        v.to(p.device), p.device_mesh, p.placements, src_data_rank=None
                    )


def save_sharded_checkpoint(
    plan: ParallelPlan,
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizers: list,
    cfg,
    state: dict,
    keep_last: int,
    with_weights: bool,
) -> None:
    """A checkpoint of an FSDP2 run: every rank's shards, rank 0's training state, and (when
    `with_weights`, at the end of the run) the whole model as the usual model.safetensors."""
    from safetensors.torch import save_model

    from chatsmith.checkpoint import begin_checkpoint, commit_checkpoint, write_state
    from chatsmith.models import build_model

    final, tmp = begin_checkpoint(run_dir, step, create=plan.is_main)
    plan.barrier()
    save_sharded(tmp, model, optimizers)
    full = full_model_state(model) if with_weights else {}  # every rank takes part
    if plan.is_main:
        if with_weights:
            plain = build_model(cfg)
            plain.load_state_dict(full)
            save_model(plain, str(tmp / "model.safetensors"))
        write_state(run_dir, tmp, step, cfg, state)
        commit_checkpoint(run_dir, final, tmp, keep_last)
    plan.barrier()

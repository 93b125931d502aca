"""Training over several processes (torchrun, gloo on CPU): N processes train exactly as one.

Each torchrun job starts two real processes; runs share module fixtures so that the file
starts as few jobs as it can.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_args, tiny_flags
from safetensors.torch import load_file

from chatsmith.checkpoint import latest_checkpoint_dir, load_checkpoint
from chatsmith.reporting import Reporter
from chatsmith.training.metrics import read_metrics
from chatsmith.training.pretrain import pretrain

pytestmark = pytest.mark.slow
STEPS, HALF = 8, 4
# warmup longer than the run: the learning rate does not depend on the step budget, so a
# run stopped at HALF and resumed to STEPS follows the same schedule as one run of STEPS
ARGS = dict(
    vocab_size=512,
    preset="tiny",
    seq_len=64,
    batch_size=8,
    warmup_steps=100,
    log_every=1,
    eval_every=1000,
    save_every=HALF,
    optimizer="muon",
    # exactness holds in fp32: bf16 matmuls round differently on each process's half batch
    precision="fp32",
)


QUIET = Reporter(quiet=True)


def torchrun(*args: str, stage: str = "pretrain", timeout: float = 240):
    """`torchrun --standalone --nproc-per-node 2 -m chatsmith STAGE ...` with this worktree's
    chatsmith."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "chatsmith", stage, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}


def cli_args(corpus, out: Path, steps: int, resume: bool = False, **over) -> list[str]:
    args = {**ARGS, "data": str(corpus["train"]), "val_data": str(corpus["val"]), **over}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in args.items()]
    where = ["--resume", str(out)] if resume else ["--out", str(out)]
    return [*flags, *where, f"--max-steps={steps}", "--seed=7", "--device=cpu"]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def assert_same_losses(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=0), step


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 1e-5, k


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, one_thread) -> Path:
    """One process, STEPS steps, a checkpoint at HALF kept."""
    out = tmp_path_factory.mktemp("ref") / "run"
    pretrain(tiny_args(corpus, **ARGS), tiny_flags(out, STEPS), QUIET)
    return out


def step_dir(run: Path, step: int) -> Path:
    """The checkpoint of `step`: its last revision when the run saved that step twice (the
    periodic save and the final one), as step_N.1."""
    saved = run.glob(f"checkpoints/step_{step:08d}*")
    revisions = sorted(saved, key=lambda p: int(p.name.partition(".")[2] or 0))
    assert revisions, f"no checkpoint of step {step} in {run}"
    return revisions[-1]


def test_two_process_ddp_trains_as_one_process(corpus, reference, tmp_path):
    out = tmp_path / "ddp"
    r = torchrun(*cli_args(corpus, out, STEPS))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_losses(losses(reference), losses(out))
    assert_same_weights(weights(step_dir(reference, STEPS)), weights(latest_checkpoint_dir(out)))
    assert r.stdout.count("run folder:") == 1  # rank 0 alone reports


def test_fsdp_checkpoint_from_two_processes_resumes_in_one(corpus, reference, tmp_path):
    out = tmp_path / "fsdp"
    r = torchrun(*cli_args(corpus, out, HALF), "--parallel=fsdp")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_checkpoint(out)
    assert ckpt.is_sharded and ckpt.step == HALF
    assert len(list((ckpt.path / "dcp").glob("*.distcp"))) == 2  # one file of shards per rank
    # the final checkpoint also holds the whole model, as one process writes it
    assert_same_weights(weights(step_dir(reference, HALF)), weights(ckpt.path))
    pretrain(tiny_args(corpus, **ARGS), tiny_flags(out, STEPS, resume=True), QUIET)
    assert_same_losses(losses(reference), losses(out))
    assert_same_weights(weights(step_dir(reference, STEPS)), weights(latest_checkpoint_dir(out)))


def test_one_process_checkpoint_resumes_in_two_fsdp_processes(corpus, reference, tmp_path):
    out = tmp_path / "one"
    pretrain(tiny_args(corpus, **ARGS), tiny_flags(out, HALF), QUIET)
    r = torchrun(
        *cli_args(corpus, out, STEPS, resume=True), "--parallel=fsdp", "--activation-checkpointing"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_losses(losses(reference), losses(out))
    assert load_checkpoint(out).is_sharded
    assert_same_weights(weights(step_dir(reference, STEPS)), weights(latest_checkpoint_dir(out)))


def test_two_process_sft_trains_as_one_process(tiny_run, tmp_path, one_thread):
    """Padded chat batches: ranks hold different numbers of learned tokens, so the loss must
    be weighted by them to match one process."""
    from chatsmith.training.config import SFTConfig
    from chatsmith.training.sft import sft

    over = dict(base_run=str(tiny_run), max_conversations=200, eval_every=1000, save_every=1000)
    over["precision"] = "fp32"  # see ARGS
    one = tmp_path / "one"
    sft(SFTConfig(**over), tiny_flags(one, 10), QUIET)
    two = tmp_path / "two"
    flags = [
        "--max-conversations=200",
        "--eval-every=1000",
        "--save-every=1000",
        "--precision=fp32",
    ]
    flags += ["--max-steps=10", "--seed=7", "--device=cpu", "--out", str(two)]
    r = torchrun(str(tiny_run), *flags, stage="sft")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_losses(losses(one), losses(two))
    assert_same_weights(weights(latest_checkpoint_dir(one)), weights(latest_checkpoint_dir(two)))


def test_a_killed_rank_ends_the_job_with_an_error(corpus, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "chatsmith", "pretrain", *cli_args(corpus, out, 100_000, eval_every=100_000)]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 180
        while not (out / "metrics.jsonl").is_file() or not losses(out):
            assert job.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        victim = _worker_pids(job.pid)[-1]
        os.kill(victim, signal.SIGKILL)
        job.wait(timeout=120)  # the job must end, not hang waiting for the dead rank
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0


def _worker_pids(parent: int) -> list[int]:
    """The processes torchrun started (its children), by reading /proc."""
    kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return sorted(int(k) for k in kids)

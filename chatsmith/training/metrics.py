"""Metrics as JSONL, the end-of-run loss curve, and the overfitting watch."""

from __future__ import annotations

import json
from pathlib import Path

from chatsmith.errors import ChatsmithError
from chatsmith.files import write_text_atomic
from chatsmith.validation import Field, check_record

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per line; a resumed run keeps appending to the same file."""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step and self.path.exists():
            # drop records written after the checkpoint we resume from, so the curve has no repeats
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif not resume_step:
            self.path.write_text("")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics log. A last line cut short (a crash mid-write) is dropped;
    damage anywhere else is an error."""
    lines = [
        (n, line)
        for n, line in enumerate(Path(path).read_bytes().decode("utf-8", "replace").splitlines(), 1)
        if line.strip()
    ]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ChatsmithError(
                f"{path}:{n} is not a JSON record: the metrics log is damaged"
            ) from None
        records.append(check_record(record, {"step": Field(float, optional=True)}, f"{path}:{n}"))
    return records


class OverfitWatch:
    """Says when held-out loss rose since the last evaluation while training loss fell."""

    def __init__(self) -> None:
        self.last: tuple[float, float] | None = None

    def check(self, train_loss: float, val_loss: float) -> str | None:
        last, self.last = self.last, (train_loss, val_loss)
        if last and val_loss > last[1] and train_loss < last[0]:
            return (
                f"held-out loss rose {last[1]:.4f} -> {val_loss:.4f} while training loss fell "
                f"{last[0]:.4f} -> {train_loss:.4f}: the model may be overfitting "
                "(more data, a smaller model or fewer steps would help)"
            )
        return None


def plot_curves(
    run_dir: Path,
    keys: tuple[str, str] = ("loss", "val_loss"),
    filename: str = "loss_curve.png",
    ylabel: str = "loss (nats/token)",
) -> Path | None:
    """Plot a training key and a held-out key against step; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in zip(keys, ("train", "held-out")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(
                *zip(*pts), label=f"{label} ({key})", marker="o" if label == "held-out" else None
            )
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / filename
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

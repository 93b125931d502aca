"""The RL run's picture: is it learning? Reward, informative groups, reply length, pass@1."""

from __future__ import annotations

from pathlib import Path

from chatsmith.training.metrics import METRICS_FILE, read_metrics

# (metrics key, panel title); the training keys are smoothed, the held-out one is not
PANELS = (
    ("reward", "mean reward of the sampled replies"),
    ("informative", "share of groups with a learning signal"),
    ("reply_tokens", "mean reply length (tokens)"),
    ("pass@1", "held-out greedy pass@1"),
)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_rl_curves(run_dir: Path, filename: str) -> Path | None:
    """Four panels against step from the run's metrics; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_metrics(Path(run_dir) / METRICS_FILE)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, PANELS):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            steps, values = zip(*pts)
            if key == "pass@1":
                ax.plot(steps, values, marker="o")
            else:
                ax.plot(steps, values, alpha=0.25, color="tab:blue")
                window = max(1, len(values) // 20)  # about 20 independent points
                ax.plot(steps, smooth(list(values), window), color="tab:blue")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    out = Path(run_dir) / filename
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

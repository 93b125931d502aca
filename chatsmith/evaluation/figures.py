"""Matplotlib (the optional `plot` extra) for the evaluation pictures, written atomically."""

from __future__ import annotations

from pathlib import Path

from chatsmith.files import write_atomic


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_png(fig, out: Path, **kw) -> Path:
    """Save and close `fig`; a reader never sees a half-written file."""
    plt = pyplot()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", **kw))
    finally:
        plt.close(fig)
    return out

"""Matplotlib (the optional `plot` extra) for the evaluation pictures, written atomically."""

from __future__ import annotations

import os
from pathlib import Path


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
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, **kw)
    plt.close(fig)
    os.replace(tmp, out)
    return out

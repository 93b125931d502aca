"""Heat maps of attention weights: a layers x heads grid, and one head enlarged with tokens."""

from __future__ import annotations

from pathlib import Path

from chatsmith.errors import ChatsmithError
from chatsmith.evaluation.figures import pyplot, save_png
from chatsmith.inference.attention import AttentionMaps


def plot_attention(maps: AttentionMaps, out: Path, layer: int | None = None, head: int = 0) -> Path:
    """Write the PNG; `layer` defaults to the last one, where heads tend to be most specific."""
    n_layer, n_head = maps.weights.shape[:2]
    layer = n_layer - 1 if layer is None else layer
    if not 0 <= layer < n_layer:
        raise ChatsmithError(f"--layer must be between 0 and {n_layer - 1}, got {layer}")
    if not 0 <= head < n_head:
        raise ChatsmithError(f"--head must be between 0 and {n_head - 1}, got {head}")
    plt = pyplot()
    if plt is None:
        raise ChatsmithError("drawing needs matplotlib: pip install 'chatsmith[plot]'")
    w = maps.weights.numpy()
    n = len(maps.tokens)
    cell = 1.1
    big = max(5.0, 0.32 * n)
    fig = plt.figure(figsize=(cell * n_head + big + 1.5, max(cell * n_layer, big) + 1.0))
    grid = fig.add_gridspec(n_layer, n_head + 1, width_ratios=[cell] * n_head + [big])
    for i in range(n_layer):
        for j in range(n_head):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(w[i, j], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if (i, j) == (layer, head):
                for side in ax.spines.values():
                    side.set_color("red")
                    side.set_linewidth(2)
            if j == 0:
                ax.set_ylabel(f"L{i}", fontsize=8)
            if i == 0:
                ax.set_title(f"H{j}", fontsize=8)
    ax = fig.add_subplot(grid[:, n_head])
    image = ax.imshow(w[layer, head], cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), maps.tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(n), maps.tokens, fontsize=8)
    ax.set_xlabel("attended-to token (key)")
    ax.set_ylabel("attending token (query)")
    ax.set_title(f"layer {layer}, head {head}")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.suptitle("attention weights: each row sums to 1 over the tokens at or before it")
    return save_png(fig, out, dpi=100, bbox_inches="tight")

"""Figures of a prune run: layer widths before and after (matplotlib, Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_widths(layers: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Output channels of every conv/linear layer, dense (grey) and pruned (blue), in model order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    n = len(layers)
    x = list(range(n))
    fig, ax = plt.subplots(figsize=(min(24.0, max(6.0, 0.18 * n + 2)), 4.0))
    ax.bar(x, [r["before"] for r in layers], color="0.8", label="dense", width=0.9)
    ax.bar(x, [r["after"] for r in layers], color="tab:blue", label="pruned", width=0.9)
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel("output channels")
    ax.set_xlim(-1, n)
    if n <= 40:
        ax.set_xticks(x, [r["module"] for r in layers], rotation=90, fontsize=7)
    ax.set_title(title or "layer widths before and after pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

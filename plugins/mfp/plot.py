"""MFP's switching trace as a picture: which criterion was followed at each epoch, and how far each
criterion's neighbour network moved the meta-attribute (the paper reports distance criteria being
chosen less early in training; this plot shows whether that happens on your run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

DISTANCES = ("minkowski-p1", "minkowski-p2", "cosine")


def plot_history(history: Sequence[dict[str, Any]], criteria: Sequence[str], meta: str, path: Path) -> Path:
    """Two panels over epochs: the chosen criterion (norms blue, distances orange); |Δ meta| per criterion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [h for h in history if h.get("switched")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    xs = [h["epoch"] + 1 for h in rows]  # 1-based; 0 = chosen at plan time
    ys = [list(criteria).index(h["criterion"]) if h["criterion"] in criteria else -1 for h in rows]
    colours = ["tab:orange" if h["criterion"] in DISTANCES else "tab:blue" for h in rows]
    top.step(xs, ys, where="mid", color="0.8", zorder=1)
    top.scatter(xs, ys, c=colours, zorder=2)
    top.set_yticks(range(len(criteria)), list(criteria))
    top.set_ylim(-0.5, len(criteria) - 0.5)
    top.set_title(f"MFP: criterion chosen per epoch (meta-attribute: {meta}; orange = distance)")
    positive = False
    for name in criteria:
        pts = [(h["epoch"] + 1, abs(h["values"][name] - h["base"])) for h in rows if name in h.get("values", {})]
        if pts:
            positive = positive or any(v > 0 for _, v in pts)
            bottom.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                ms=3,
                ls="--" if name in DISTANCES else "-",
                label=name,
            )
    if positive:
        bottom.set_yscale("symlog", linthresh=1e-6)
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    bottom.set_ylabel(f"|Δ {meta}| of the neighbour")
    if rows:
        bottom.legend(fontsize="small", ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

"""Watching BN |γ| during sparsity training, to pick Network Slimming's ``s`` and see a collapse coming.

Why: users of NS tools ask how to choose ``s`` and why mAP collapses after pruning (SlimYOLOv3
and network-slimming issues). The answer is in the γ distribution: sparsity training should
push a large share of |γ| towards zero *and leave a gap* at the target ratio. Each epoch we keep
a histogram on fixed log bins, the share under 1e-2 and the sorted-|γ| curve (101 quantiles);
:func:`plot` draws them, with the threshold the target ratio would choose marked. Reading it:

* the curve at the ratio still high (t ≫ 1e-2) after the sparsity epochs → ``s`` too small or
  too few epochs: pruning at that ratio removes live channels;
* the share under 1e-2 far beyond the ratio and accuracy falling during sparsity training →
  ``s`` too large;
* a sharp knee at the ratio → a clean cut; fine-tuning recovers quickly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detprune_plugins.slimming.threshold import global_threshold

log = logging.getLogger("detprune.slimming")

SMALL = 1e-2  # "γ under 1e-2": the share the issue asks to log
EDGES = [0.0] + [float(v) for v in np.logspace(-5, 1, 25)]  # fixed bins, comparable across epochs
QUANTILES = 101


def snapshot(values: torch.Tensor, ratio: float | None = None) -> dict[str, Any]:
    """A plain-container summary of one |γ| distribution (tensors are not needed to plot it)."""
    v = values.detach().float().cpu().reshape(-1)
    n = int(v.numel())
    if n == 0:
        return {
            "n": 0,
            "share_small": 0.0,
            "mean": 0.0,
            "median": 0.0,
            "hist": [0] * (len(EDGES) - 1),
            "quantiles": [],
            "threshold": None,
            "ratio": ratio,
        }
    clipped = v.clamp(max=EDGES[-1])
    hist = np.histogram(clipped.numpy(), bins=np.asarray(EDGES))[0]
    q = torch.quantile(v, torch.linspace(0, 1, QUANTILES)) if n > 1 else v.repeat(QUANTILES)
    return {
        "n": n,
        "share_small": float((v < SMALL).float().mean()),
        "mean": float(v.mean()),
        "median": float(v.median()),
        "hist": [int(c) for c in hist],
        "quantiles": [float(x) for x in q],
        "threshold": global_threshold(v, ratio) if ratio else None,
        "ratio": ratio,
    }


def describe(snap: dict[str, Any], label: str) -> str:
    text = (
        f"{label}: {100 * snap['share_small']:.1f}% of {snap['n']} prunable |γ| < {SMALL:g}, "
        f"median {snap['median']:.3g}"
    )
    if snap.get("threshold") is not None:
        text += f"; ratio {snap['ratio']:g} would cut at |γ| ≤ {snap['threshold']:.3g}"
    return text


def plot(
    history: list[dict[str, Any]],
    out_dir: str | Path,
    ratio: float | None = None,
    at_plan: dict[str, Any] | None = None,
    s: float | None = None,
) -> Path | None:
    """Write ``gamma.png`` (histograms, sorted-|γ| curves, per-epoch share and threshold); None if empty."""
    entries = [e for e in history if e.get("n")]
    if at_plan is not None and at_plan.get("n"):
        entries = entries + [dict(at_plan, epoch="at pruning")]
    if not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    cmap = plt.get_cmap("viridis")
    edges = np.asarray(EDGES)
    centres = np.sqrt(np.maximum(edges[:-1], edges[1] / 10) * edges[1:])
    xs = np.linspace(0, 1, QUANTILES)
    for i, e in enumerate(entries):
        final = e["epoch"] == "at pruning"
        style = (
            dict(color="black", ls="--", lw=1.6) if final else dict(color=cmap(i / max(len(entries) - 1, 1)), lw=1.2)
        )
        label = "at pruning" if final else f"epoch {int(e['epoch']) + 1}"
        frac = np.asarray(e["hist"], dtype=float) / e["n"]
        axes[0].plot(centres, frac, label=label, **style)
        axes[1].plot(xs, np.maximum(np.asarray(e["quantiles"]), 1e-6), label=label, **style)
    axes[0].axvline(SMALL, color="gray", ls=":", lw=1)
    axes[0].set(
        xscale="log", xlabel="|γ| (log bins)", ylabel="share of prunable channels", title="|γ| histogram per epoch"
    )
    axes[1].axhline(SMALL, color="gray", ls=":", lw=1)
    axes[1].set(
        yscale="log",
        xlabel="fraction of prunable channels (sorted by |γ|)",
        ylabel="|γ|",
        title="sorted |γ|: a knee at the ratio = a clean cut",
    )
    last = entries[-1]
    ratio = ratio if ratio is not None else last.get("ratio")
    if ratio:
        t = _threshold(last, ratio)
        axes[1].axvline(ratio, color="red", lw=1)
        axes[1].plot([ratio], [max(t, 1e-6)], "o", color="red", label=f"ratio {ratio:g}: t = {t:.3g}")
        axes[0].axvline(max(t, 1e-6), color="red", lw=1, label=f"t at ratio {ratio:g}")
    trained = [e for e in entries if e["epoch"] != "at pruning"]
    if trained:
        ep = [int(e["epoch"]) + 1 for e in trained]
        axes[2].plot(ep, [100 * e["share_small"] for e in trained], "o-", color="tab:blue", label=f"% |γ| < {SMALL:g}")
        axes[2].set(xlabel="epoch", ylabel=f"% of |γ| < {SMALL:g}", title="sparsity progress")
        if ratio:
            tw = axes[2].twinx()
            tw.plot(
                ep,
                [max(_threshold(e, ratio), 1e-6) for e in trained],
                "s--",
                color="red",
                label=f"t at ratio {ratio:g}",
            )
            tw.set(yscale="log", ylabel="threshold t")
        handles = [h for ax in fig.axes[2:] for h in ax.get_legend_handles_labels()[0]]
        axes[2].legend(handles=handles, loc="center left", fontsize=8)
    else:
        axes[2].text(0.5, 0.5, "no sparsity-training epochs recorded", ha="center", va="center")
        axes[2].set_axis_off()
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle("Network Slimming: BN |γ| of prunable channels" + (f" (s = {s:g})" if s is not None else ""))
    fig.tight_layout()
    path = out / "gamma.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _threshold(snap: dict[str, Any], ratio: float) -> float:
    """The exact threshold when the snapshot was taken at this ratio, else read off its quantiles."""
    if snap.get("ratio") == ratio and snap.get("threshold") is not None:
        return float(snap["threshold"])
    q = snap["quantiles"]
    return float(np.interp(ratio, np.linspace(0, 1, len(q)), q)) if q else 0.0

"""A run folder's human-readable record: ``metrics.csv`` (one row per epoch) and a PNG plot.

Both are rewritten whole from the run's history after every epoch (atomically, via a temp file),
so after a resume they hold exactly the epochs the checkpoint knows about, with no duplicate or
orphaned rows from a killed attempt. The plot uses matplotlib's object API on an Agg canvas: no
display and no global backend switch.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIRST_COLUMNS = ("epoch", "step", "lr", "train_loss")


def columns(history: Sequence[dict[str, Any]]) -> list[str]:
    """Fixed columns first, then every other key in order of first appearance."""
    cols = [c for c in FIRST_COLUMNS if any(c in row for row in history)]
    for row in history:
        cols += [k for k in row if k not in cols]
    return cols


def write_metrics_csv(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """One row per epoch; a cell is empty where that epoch did not record the value."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(history), restval="", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return _write_text(Path(path), buf.getvalue())


def plot_history(history: Sequence[dict[str, Any]], path: str | os.PathLike, metric: str) -> Path:
    """Training loss (and validation loss when present) and the task metric against epochs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        xs, ys = _series(history, key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend(loc="best")
    xs, ys = _series(history, metric)
    if xs:
        ax_metric.plot(xs, ys, marker="o", markersize=3, color="tab:green")
        best = max(range(len(ys)), key=ys.__getitem__)
        ax_metric.annotate(
            f"best {ys[best]:.4f}", (xs[best], ys[best]), textcoords="offset points", xytext=(0, 6), ha="center"
        )
    else:
        ax_metric.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax_metric.transAxes)
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)
    return path


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(row["epoch"], float(row[key])) for row in history if row.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path

"""Paired statistics of the fidelity benchmark: a method and its baseline are run from the same seed
(same dense checkpoint, same data order), so their per-seed differences are paired.

``delta`` is the mean of ``method - baseline`` in the metric's units; ``ci95`` is Student's t
interval of that mean (n - 1 degrees of freedom). The verdict reads the interval in the direction
where the method is better: ``holds`` when the whole interval says better, ``fails`` when it says
worse, ``unresolved`` when it contains no difference (or there is one seed: no interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: two-sided 95 % quantiles of Student's t by degrees of freedom (1..30); beyond, the normal 1.96
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
       2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df: int) -> float:
    return T95[df - 1] if 1 <= df <= len(T95) else 1.96


def paired(method: Sequence[float], baseline: Sequence[float], higher_is_better: bool = True) -> dict[str, Any]:
    """``{seeds, method_value, baseline_value, delta, ci95, verdict}`` of paired per-seed values."""
    if len(method) != len(baseline) or not method:
        raise ValueError(f"paired values need one method and one baseline value per seed, got {method} / {baseline}")
    n = len(method)
    diffs = [m - b for m, b in zip(method, baseline)]
    delta = sum(diffs) / n
    if n > 1:
        sd = math.sqrt(sum((d - delta) ** 2 for d in diffs) / (n - 1))
        half = t95(n - 1) * sd / math.sqrt(n)
        ci = [delta - half, delta + half]
    else:
        ci = [float("nan"), float("nan")]
    better = [c if higher_is_better else -c for c in ci]
    if n > 1 and min(better) > 0:
        verdict = "holds"
    elif n > 1 and max(better) < 0:
        verdict = "fails"
    else:
        verdict = "unresolved"
    return {
        "seeds": n,
        "method_value": sum(method) / n,
        "baseline_value": sum(baseline) / n,
        "delta": delta,
        "ci95": ci,
        "verdict": verdict,
    }

"""Connected components over integer ids, vectorised with numpy.

The engine collects "these two channel ids must live or die together" pairs while it captures a
forward pass and resolves them once at the end; a labelling by minimum id keeps class and group
numbering deterministic for a given model and input shape.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def components(n: int, edges: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Label ``0..n-1`` so that ids joined by an edge share a label (the smallest id of the set).

    ``edges`` yields pairs of equally long int arrays ``(a, b)``. Min-label propagation with
    pointer jumping: each round lowers both ends of every edge to their common minimum, then
    jumps labels to their labels' labels; it stops when nothing changes.
    """
    labels = np.arange(n, dtype=np.int64)
    pairs = [(np.asarray(a, np.int64).ravel(), np.asarray(b, np.int64).ravel()) for a, b in edges]
    pairs = [(a, b) for a, b in pairs if a.size]
    if not pairs or n == 0:
        return labels
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    keep = a != b
    a, b = a[keep], b[keep]
    while True:
        la, lb = labels[a], labels[b]
        low = np.minimum(la, lb)
        before = labels.copy()
        np.minimum.at(labels, la, low)
        np.minimum.at(labels, lb, low)
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        while True:  # pointer jumping until every label is a root
            nxt = labels[labels]
            if np.array_equal(nxt, labels):
                break
            labels = nxt
        if np.array_equal(labels, before):
            return labels

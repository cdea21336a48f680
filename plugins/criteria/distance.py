"""MFP's filter-distance criteria: ``minkowski-p1``, ``minkowski-p2`` and ``cosine``.

He et al., "Meta Filter Pruning" (arXiv 1904.03961; TNNLS: "Filter Pruning by Switching to Neighboring
CNNs with Good Attributes") put geometric-distance criteria beside the ℓ1/ℓ2 norms: a filter's
importance is the sum of its distances to the other filters of its layer,
g_j = Σ_k D(f_j, f_k), the tractable surrogate of FPGM's geometric median (He et al., CVPR 2019, §3.3;
FPGM issue #65). A filter close to all the others (small g) is redundant: the others can stand in
for it, so the smallest g go first and the score (higher = keep) is g itself. The distances are
D₁ = ‖f_j − f_k‖₁, D₂ = ‖f_j − f_k‖₂ and D_cos = 1 − f_jᵀf_k / (‖f_j‖‖f_k‖ + ε) (ε keeps an
all-zero filter finite; D(f, f) = 0 by definition). An all-zero filter (soft-pruned, SFP) is already
gone: it scores :data:`ZERO_SCORE`, below every distance sum, so it is pruned first. Scored by its
distances it would sit mid-ranking (cosine: 1 to everything) or near the top (Minkowski: ‖f_k‖ to
each), and under soft pruning the zeroed set would grow past the target every epoch. ../shared/research/algorithms.md
§2.2 has the math, §2.6 the reference code's bugs not repeated here (FPGM's always-true
``dist_type`` tests that made ``l1`` Euclidean and never ran ``cos``).

Coupled groups (§2.5): each channel's filter vectors are concatenated across every producer of
the group (a residual stream's convs), zeros where a producer does not carry the channel, and the
distances are taken between those long vectors. With ``normalize`` (default) each producer's rows
are first divided by that producer's mean filter norm, so every layer of the group has the same
say (as the ``l1``/``l2`` criteria do); for a single producer this scales g uniformly (``cosine``:
not at all), so the ranking is the paper's.
"""

from __future__ import annotations

import torch
from torch import nn

import detprune
from detprune.plugin.protocols import Criterion

#: distance name -> the p of the per-producer normaliser (cosine uses the Euclidean norm).
KINDS = {"minkowski-p1": 1.0, "minkowski-p2": 2.0, "cosine": 2.0}

#: the score of an all-zero filter: finite (the planner rejects inf) and below every distance sum (>= 0).
ZERO_SCORE = -1.0


def distance_sums(x: torch.Tensor, kind: str, eps: float = 1e-8) -> torch.Tensor:
    """g_j = Σ_k D(x_j, x_k) for the rows of ``x`` ``[n, d]`` (vectorised: one ``[n, n]`` matrix).

    A row whose norm is at most ``eps`` times the largest (numerically zero) gets :data:`ZERO_SCORE`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown distance {kind!r}; known: {', '.join(KINDS)}")
    norms = x.norm(dim=1)
    if kind == "cosine":
        d = 1.0 - (x @ x.t()) / (norms[:, None] * norms[None, :] + eps)
    else:
        d = torch.cdist(x[None], x[None], p=KINDS[kind])[0]
    d.fill_diagonal_(0.0)
    zero = norms <= eps * norms.max().clamp_min(torch.finfo(norms.dtype).tiny)
    return d.sum(dim=1).masked_fill(zero, ZERO_SCORE)


def group_filter_matrix(model: nn.Module, group, normalize: bool = True, p: float = 2.0) -> torch.Tensor:
    """One row per group channel: its filters in every producer, concatenated -> ``[size, Σ d]``.

    Stays on the weights' device (the distances of a large group are cheap on a GPU).
    """
    blocks = []
    for slot in group.producers:
        rows = group.rows(model, slot)
        if rows is None:
            continue
        rows = rows.float()
        if normalize:
            rows = rows / rows.norm(p=p, dim=1).mean().clamp_min(1e-12)
        block = rows.new_zeros(group.size, rows.shape[1])
        block.index_add_(0, slot.channel.to(rows.device), rows)
        blocks.append(block)
    if not blocks:
        raise ValueError(f"group {group.id} has no producer with weights to measure distances on")
    return torch.cat(blocks, dim=1)


class _Distance(Criterion):
    kind = "minkowski-p2"

    def __init__(self, normalize: bool = True, eps: float = 1e-8):
        """
        :param normalize: divide each producer's rows by its mean p-norm before the distances, so every
            producer of a coupled group weighs the same.
        :param eps: added to norms in the cosine distance; a filter whose norm is at most ``eps`` times the
            largest counts as zero (already pruned) and scores lowest.
        """
        self.normalize, self.eps = normalize, eps

    def score(self, model: nn.Module, group, ctx=None) -> torch.Tensor:
        with torch.no_grad():
            x = group_filter_matrix(model, group, self.normalize, KINDS[self.kind])
            return distance_sums(x, self.kind, self.eps).cpu()


class MinkowskiP1(_Distance):
    """Sum of ℓ1 (Manhattan) distances to the group's other filters; nearest the rest go (MFP, FPGM §3.3)."""

    kind = "minkowski-p1"


class MinkowskiP2(_Distance):
    """Sum of Euclidean distances to the group's other filters; nearest the rest go (MFP, FPGM §3.3)."""

    kind = "minkowski-p2"


class Cosine(_Distance):
    """Sum of cosine distances 1 - cos(f_j, f_k) to the group's other filters; most aligned go (MFP)."""

    kind = "cosine"


@detprune.hookimpl
def detprune_criteria():
    return {"minkowski-p1": MinkowskiP1, "minkowski-p2": MinkowskiP2, "cosine": Cosine}

"""Built-in magnitude criteria: ``l1`` and ``l2`` filter norms.

``l1`` is the criterion of Li et al., "Pruning Filters for Efficient ConvNets" (ICLR 2017, §3.1):
a filter's importance is the sum of its absolute kernel weights, and the smallest go. ``l2`` is the
Euclidean norm that soft filter pruning (He et al., IJCAI 2018, §3.2) ranks by. For a coupled
group (a residual stream), each producer's norms are divided by that producer's mean norm and
averaged over the producers that carry each channel, so every layer of the group has the same
say and scores stay comparable across groups under ``global_ranking`` (Torch-Pruning's group
importance normalises and reduces the same way: ``normalizer='mean'``, ``group_reduction='mean'``).
"""

from __future__ import annotations

import torch
from torch import nn

import detprune
from detprune.plugin.protocols import Criterion


class _Norm(Criterion):
    p: float = 1.0

    def __init__(self, normalize: bool = True):
        """
        :param normalize: divide each producer's filter norms by that producer's mean norm, so groups of
            layers with different scales compare (needed for ``--global-ranking``).
        """
        self.normalize = normalize

    def _per_layer(self, rows: torch.Tensor) -> torch.Tensor:
        norms = rows.float().norm(p=self.p, dim=1)
        if self.normalize:
            norms = norms / norms.mean().clamp_min(1e-12)
        return norms

    def score(self, model: nn.Module, group, ctx=None) -> torch.Tensor:
        total = group.reduce(model, self._per_layer, role="out")
        count = torch.zeros(group.size)
        for slot in group.producers:
            count.index_add_(0, slot.channel, torch.ones(len(slot.channel)))
        return total / count.clamp_min(1.0)


class L1(_Norm):
    """Filter L1 norm, normalised per layer, averaged over a group's producers (Li et al. 2017, §3.1)."""

    p = 1.0


class L2(_Norm):
    """Filter L2 norm, normalised per layer, averaged over a group's producers (He et al. 2018, §3.2)."""

    p = 2.0


@detprune.hookimpl
def detprune_criteria():
    return {"l1": L1, "l2": L2}

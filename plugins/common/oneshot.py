"""Pruner ``oneshot``: score every coupled group once with any criterion and cut the lowest.

The baseline every structured-pruning paper compares against: Li et al., "Pruning Filters for
Efficient ConvNets" (ICLR 2017, §3.1-3.2) prune each layer's smallest-L1 filters once and
fine-tune. Here the criterion is any registered one (``l1``, ``l2``, ``bn-scale``, ...), channels
are scored per coupled group (a residual stream loses the same channels in every layer that
carries it) and ``graph.plan`` removes ``ctx.ratio`` of each group, or of all groups together
with ``global_ranking`` (the criterion's scores must then be comparable across layers).
"""

from __future__ import annotations

from typing import Any

from torch import nn

import detprune
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Pruner, score_groups


def achieved_ratio(graph: Any, plan: PruningPlan) -> float:
    """Fraction of the prunable groups' channels that ``plan`` removes (floors and rounding included)."""
    groups = graph.prunable_groups()
    total = sum(g.size for g in groups)
    kept = sum(plan.kept_count(g.id, g.size) for g in groups)
    return 1.0 - kept / total if total else 0.0


class OneShot(Pruner):
    """Score each coupled group once with a criterion and remove the lowest channels (Li et al. 2017, §3.1)."""

    def __init__(
        self,
        criterion: str | None = None,
        global_ranking: bool | None = None,
        min_keep: float | None = None,
        criterion_options: dict[str, Any] | None = None,
    ) -> None:
        """
        :param criterion: a registered criterion name; default: the context's (``--criterion``).
        :param global_ranking: one ranking over all groups instead of ``ratio`` per group;
            default: the context's.
        :param min_keep: per-group floor as a fraction of its channels; default: the context's.
        :param criterion_options: passed to the criterion's factory (e.g. ``normalize=False``).
        """
        self.criterion, self.global_ranking, self.min_keep = criterion, global_ranking, min_keep
        self.criterion_options = dict(criterion_options or {})

    def plan(self, model: nn.Module, graph: Any, ctx: PruneContext) -> PruningPlan:
        name = self.criterion or ctx.criterion
        crit = detprune.plugins().criterion(name, **self.criterion_options)
        global_ranking = ctx.global_ranking if self.global_ranking is None else self.global_ranking
        min_keep = ctx.min_keep if self.min_keep is None else self.min_keep
        scores = score_groups(crit, model, graph, ctx)
        plan = graph.plan(scores, ctx.ratio, round_to=ctx.round_to, global_ranking=global_ranking, min_keep=min_keep)
        plan.meta.update(
            pruner="oneshot",
            criterion=name,
            asked_ratio=float(ctx.ratio),
            achieved_ratio=achieved_ratio(graph, plan),
            global_ranking=bool(global_ranking),
            min_keep=float(min_keep),
            round_to=ctx.round_to,
        )
        return plan


@detprune.hookimpl
def detprune_pruners():
    return {"oneshot": OneShot}

"""``detprune.prune``: trace, score, plan and cut in one call.

result = detprune.prune(model, (x,), ratio=0.3, criterion="l1", protected=("fc",))
result.model            # the smaller nn.Module (a copy; ``model`` is untouched)
detprune.save(result, "pruned.pt")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from detprune.eval.measure import count_flops, count_params
from detprune.graph import ChannelGraph, trace
from detprune.graph.plan import PruningPlan
from detprune.graph.trace import as_inputs
from detprune.plugin.context import PruneContext
from detprune.plugin.host import plugins
from detprune.plugin.protocols import conform, score_groups
from detprune.recipe import ATTR, builder_spec, mark


@dataclass
class PruneResult:
    """A pruned model with its plan, graph and before/after sizes.

    FLOPs need a forward pass each, so they are counted on first access (of the dense model as
    it is at that moment, and of the pruned one).
    """

    model: nn.Module
    plan: PruningPlan
    graph: ChannelGraph
    params_before: int
    params_after: int
    builder: dict[str, Any] | None = None
    dense: nn.Module | None = field(default=None, repr=False)
    parent: dict[str, Any] | None = field(default=None, repr=False)  # recipe of a model loaded by detprune.load
    _flops: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def example_inputs(self) -> tuple[Any, ...]:
        return self.graph.example_inputs

    @property
    def flops_before(self) -> int:
        if "before" not in self._flops:
            if self.dense is None:
                raise ValueError("the dense model is not available to count its FLOPs")
            self._flops["before"] = count_flops(self.dense, self.example_inputs)
        return self._flops["before"]

    @property
    def flops_after(self) -> int:
        if "after" not in self._flops:
            self._flops["after"] = count_flops(self.model, self.example_inputs)
        return self._flops["after"]

    def summary(self) -> str:
        return (
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_after / self.params_before:.1%}), "
            f"FLOPs {self.flops_before:,} -> {self.flops_after:,} ({self.flops_after / max(self.flops_before, 1):.1%})"
        )


def _criterion(criterion: Any) -> Any:
    if isinstance(criterion, str):
        return plugins().criterion(criterion)
    if not callable(getattr(criterion, "score", None)):
        raise ValueError(f"criterion must be a name or an object with score(model, group, ctx), got {criterion!r}")
    return conform("criterion", criterion)


def prune(
    model: nn.Module,
    example_inputs: Any,
    ratio: float = 0.3,
    criterion: Any = "l1",
    protected: Iterable[str] = (),
    round_to: int | None = None,
    global_ranking: bool = False,
    *,
    leaves: Sequence[Any] = (),
    min_keep: float = 0.0,
    builder: Any = None,
    inplace: bool = False,
    check: bool = True,
    ctx: PruneContext | None = None,
) -> PruneResult:
    """Remove ``ratio`` of the channels of every prunable group (or globally), lowest score first.

    :param criterion: a registered criterion name (``detprune plugins``) or an object with
        ``score(model, group, ctx)``.
    :param protected: module names whose output channels stay (a detector's output convs).
    :param round_to: keep channel counts at multiples of this (8 or 16 suit GPU kernels).
    :param builder: how to rebuild the dense model for :func:`detprune.load` (an adapter
        instance, ``{"adapter": name, "args": {...}}`` or ``{"callable": "pkg.mod:fn", "args": {...}}``;
        a callable loads only with ``detprune.load(path, trusted=[...])``). A model returned by
        :func:`detprune.load` needs none: the new recipe chains the stages it was loaded with.
    :param ctx: a :class:`detprune.PruneContext` for criteria that need more than weights, e.g.
        ``PruneContext(train_loader=loader, device=...)`` for data-driven scores (ThiNet, Taylor);
        its ``ratio``/``round_to``/``min_keep`` are ignored in favour of this function's arguments,
        and ``ctx.graph`` is set to the traced graph.
    """
    inputs = as_inputs(example_inputs)
    graph = trace(model, inputs, protected=tuple(protected), leaves=tuple(leaves))
    crit = _criterion(criterion)
    name = criterion if isinstance(criterion, str) else type(criterion).__name__
    if ctx is None:
        ctx = PruneContext(example_inputs=inputs)
    ctx.ratio, ctx.round_to, ctx.global_ranking, ctx.min_keep, ctx.criterion = (
        ratio,
        round_to,
        global_ranking,
        min_keep,
        name,
    )
    if not ctx.example_inputs:
        ctx.example_inputs = inputs
    ctx.graph = graph
    scores = score_groups(crit, model, graph, ctx)
    plan = graph.plan(scores, ratio, round_to=round_to, global_ranking=global_ranking, min_keep=min_keep)
    plan.meta["criterion"] = ctx.criterion
    params_before = count_params(model)
    parent, spec = getattr(model, ATTR, None), builder_spec(builder)
    pruned = graph.apply(model, plan, inplace=inplace, check=check)
    mark(pruned, parent, spec, graph, plan)
    return PruneResult(
        model=pruned,
        plan=plan,
        graph=graph,
        params_before=params_before,
        params_after=count_params(pruned),
        builder=spec,
        dense=None if inplace else model,
        parent=parent,
    )

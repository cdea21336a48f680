"""What a criterion, pruner or compensator receives besides the model: :class:`PruneContext`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from detprune.errors import DetpruneError
from detprune.graph import ChannelGraph, trace

if TYPE_CHECKING:  # annotations only
    from detprune.plugin.protocols import ModelAdapter


@dataclass
class PruneContext:
    """Everything a criterion, pruner or compensator may need besides the model and its graph.

    ``ratio`` is always the fraction of channels *removed* (0.3 = remove 30 %); methods whose
    papers speak of the kept fraction convert at their edge.
    ``options`` carries method-specific settings parsed from the CLI or passed by the caller
    (e.g. ``{"alpha": 0.3, "shortcut": "sketch"}``); each plugin documents the keys it reads.
    ``graph`` is the dense model's graph: the host sets it right after tracing, before any plugin
    runs; a plugin used on its own gets one from :meth:`require_graph`.
    ``holdout_loader``: training images held out of training, for methods that judge the model on
    unseen data without touching the evaluation split (MFP's meta-attribute). The pipeline fills it
    when the pruner asks (``Pruner.holdout_fraction``), splitting the training set by
    :func:`split_holdout` and training on the rest only.
    """

    example_inputs: tuple[Any, ...] = ()
    ratio: float = 0.5
    round_to: int | None = None
    global_ranking: bool = False
    min_keep: float = 0.0
    criterion: str = "l1"
    adapter: ModelAdapter | None = None
    train_loader: Iterable[Any] | None = None
    val_loader: Iterable[Any] | None = None
    holdout_loader: Iterable[Any] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    graph: ChannelGraph | None = None
    progress: bool = True  # plugins show tqdm bars only when this is set (``--no-progress`` clears it)

    def require_graph(self, model: nn.Module) -> ChannelGraph:
        """The graph of ``model``: :attr:`graph` when set, else traced now (and kept) on
        :attr:`example_inputs` (or the adapter's) with the adapter's protected layers — the one way
        every plugin gets a graph, so all of them see the same groups."""
        if self.graph is not None:
            return self.graph
        inputs = tuple(self.example_inputs) or (
            tuple(self.adapter.example_inputs(1)) if self.adapter is not None else ()
        )
        if not inputs:
            raise DetpruneError("no channel graph to work on: set ctx.graph, ctx.example_inputs or ctx.adapter")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        inputs = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
        protected = tuple(self.adapter.protected(model)) if self.adapter is not None else ()
        self.graph = trace(model, inputs, protected=protected)
        return self.graph


def split_holdout(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """``(train, holdout)``: ``fraction`` of ``dataset`` (at least one sample, never all) drawn by ``seed``.

    One deterministic rule, so a pipeline's held-out images and a plugin's own carve-out agree.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if not 0.0 < fraction < 1.0 or n < 2:
        raise DetpruneError(f"a holdout needs 0 < fraction < 1 and 2+ samples, got {fraction} of {n}")
    k = min(max(1, round(fraction * n)), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, sorted(order[k:].tolist())), Subset(dataset, sorted(order[:k].tolist()))

"""The objects plugins exchange with the host (../shared/DESIGN.md, "The four plugin kinds").

Plugins return *factories* (usually classes) from their hooks; the host instantiates them with
keyword options. The Protocols below state what an instance must offer; they are
``runtime_checkable`` so the host can tell a plugin author early that a method is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from detprune.graph.plan import PruningPlan

if TYPE_CHECKING:  # annotations only
    from detprune.graph.groups import ChannelGraph, ChannelGroup

Task = Literal["classification", "detection"]


@dataclass
class PruneContext:
    """Everything a criterion, pruner or compensator may need besides the model and its graph.

    ``ratio`` is always the fraction of channels *removed* (0.3 = remove 30 %); methods whose
    papers speak of the kept fraction convert at their edge.
    ``options`` carries method-specific settings parsed from the CLI or passed by the caller
    (e.g. ``{"alpha": 0.3, "shortcut": "sketch"}``); each plugin documents the keys it reads.
    """

    example_inputs: tuple[Any, ...] = ()
    ratio: float = 0.5
    round_to: int | None = None
    global_ranking: bool = False
    min_keep: float = 0.0
    criterion: str = "l1"
    adapter: "ModelAdapter | None" = None
    train_loader: Iterable[Any] | None = None
    val_loader: Iterable[Any] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    graph: "ChannelGraph | None" = None  # the dense model's graph, set by the pipeline before compensating
    progress: bool = True  # plugins show tqdm bars only when this is set (``--no-progress`` clears it)


@runtime_checkable
class Criterion(Protocol):
    """Scores the channels of one coupled group; a higher score means "keep"."""

    def score(self, model: nn.Module, group: "ChannelGroup", ctx: PruneContext) -> torch.Tensor:
        """Return a float tensor of shape ``[group.size]``."""
        ...


@runtime_checkable
class Pruner(Protocol):
    """Decides which channels go, possibly by training first.

    Only ``plan`` is required. Training-time callbacks, when defined, are called by the Trainer:
    ``loss_term(model, outputs, batch) -> Tensor`` (added to the task loss),
    ``on_after_backward(model)`` (after ``loss.backward()``, before ``optimizer.step()``),
    ``on_after_step(model)`` (right after ``optimizer.step()``: e.g. re-apply a hard mask),
    ``on_epoch_end(model, epoch)`` (after each training epoch, before evaluation).
    """

    def plan(self, model: nn.Module, graph: "ChannelGraph", ctx: PruneContext) -> PruningPlan:
        ...


@runtime_checkable
class Compensator(Protocol):
    """Repairs the kept weights of a pruned model, in place, using the original model."""

    def compensate(
        self, original: nn.Module, pruned: nn.Module, plan: PruningPlan, ctx: PruneContext
    ) -> None:
        ...


@runtime_checkable
class ModelAdapter(Protocol):
    """Owns one model family: its definition, loss, decoding, metric and protected layers.

    The host instantiates an adapter with its build arguments (``AdapterCls(**args)``); ``args``
    must be JSON-serialisable and are kept in ``self.args``, so a pruning recipe can rebuild the
    dense model from ``{"adapter": name, "args": args}``.

    Detection batches are ``(images, targets, metas)``: ``images`` a float tensor
    ``[B, 3, H, W]`` in 0..1; ``targets`` a list of ``{"boxes": [N, 4] xyxy pixels of the network
    input, "labels": [N] 0-based class}``; ``metas`` a list of dicts with at least
    ``image_id``, ``orig_size`` ``(h, w)``, ``scale`` and ``pad`` ``(x, y)`` to map boxes back.
    ``decode`` returns one ``{"boxes" (xyxy, original image pixels), "scores", "labels"}`` per image.
    Classification batches are ``(images, labels)``; ``decode`` returns class probabilities.
    """

    task: Task
    args: dict[str, Any]

    def build(self) -> nn.Module:
        """A freshly initialised dense model for ``self.args``."""
        ...

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs for tracing and measuring, at the model's default input size."""
        ...

    def loss(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and its named parts (for logging)."""
        ...

    def decode(self, outputs: Any, metas: Any) -> list[dict[str, torch.Tensor]]:
        """Model outputs to predictions in original image coordinates."""
        ...

    def protected(self, model: nn.Module) -> list[str]:
        """Qualified names of modules whose output channels must never be pruned."""
        ...

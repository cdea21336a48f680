"""The base classes a plugin extends: one typed lifecycle, every optional step a no-op.

The host and the Trainer call these methods directly, in the order the docstrings give; a plugin
overrides what its method needs. A plugin that does not subclass (duck typing) is wrapped by
:func:`conform` when the host creates it, so its missing optional methods become the no-ops below;
a missing *required* method (``score``, ``plan``, ``compensate``, an adapter's ``build`` ...) is
reported when the plugin loads, naming the plugin and its distribution (:func:`missing_methods`).
The author's guide is docs/plugin-guide.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan

if TYPE_CHECKING:  # annotations only
    from detprune.graph import ChannelGraph, ChannelGroup
    from detprune.plugin.context import PruneContext

Task = Literal["classification", "detection"]


class Criterion:
    """Scores the channels of one coupled group; a higher score means "keep".

    Lifecycle, per decision: ``prepare(model, graph, ctx)`` once (a data-driven criterion samples
    activations here), ``score(model, group, ctx)`` per group, ``reset()`` once (drop what
    prepare computed: the model changes next). :func:`score_groups` runs the three.
    """

    def prepare(self, model: nn.Module, graph: ChannelGraph, ctx: PruneContext) -> None:
        """Called once before the groups of ``graph`` are scored on ``model`` as it is now."""

    def score(self, model: nn.Module, group: ChannelGroup, ctx: PruneContext) -> torch.Tensor:
        """A float tensor of shape ``[group.size]``; must not modify the model."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget what :meth:`prepare` computed."""


class Pruner:
    """Decides which channels go, possibly while training. Only :meth:`plan` is required.

    Lifecycle in a run (``detprune prune``; the Trainer calls the training steps)::

        bind(ctx)                      # ctx.graph is the traced model: attach(ctx.graph) by default
        for each step: train_step(...)             # forward, loss (+ loss_term), backward
                       on_after_backward(model)    # true gradients, before optimizer.step()
                       on_after_step(model)        # weights just stepped
        after each epoch: on_epoch_end(model, epoch)
        state_dict() / load_state_dict(state)      # checkpointed with the Trainer's state
        plan(model, graph, ctx) -> PruningPlan
        plot(out_dir)                              # the pruner's own figures, listed in the report
    """

    ctx: PruneContext | None = None
    #: fraction of the training set the pipeline holds out of all training into ``ctx.holdout_loader``
    #: (0: none); for pruners that judge the model on unseen training images.
    holdout_fraction: float = 0.0

    def attach(self, graph: ChannelGraph) -> None:
        """The model's channel graph, before training."""

    def bind(self, ctx: PruneContext) -> None:
        """The run's context (ratio, adapter, loaders, graph) before training; keeps it and attaches the graph."""
        self.ctx = ctx
        if ctx.graph is not None:
            self.attach(ctx.graph)

    def train_step(
        self,
        model: nn.Module,
        batch: tuple[Any, ...],
        adapter: Any,
        forward: Callable[[torch.Tensor], Any],
        backward: Callable[[torch.Tensor], None],
    ):
        """One step's forward, loss and backward; returns ``(loss, {part: float})``.

        ``forward(images)`` runs the (DDP-wrapped) model under autocast with fp32 outputs;
        ``backward(loss)`` accumulates (scaled) gradients and may be called several times, all
        into the one optimiser step that follows (AutoSlim's sandwich rule overrides this).
        """
        outputs = forward(batch[0])
        loss, parts = adapter.loss(outputs, batch[1])
        loss = loss + self.loss_term(model, outputs, batch)
        backward(loss)
        return loss, parts

    def loss_term(self, model: nn.Module, outputs: Any, batch: tuple[Any, ...]) -> torch.Tensor | float:
        """Added to the task loss before backward (e.g. a sparsity penalty)."""
        return 0.0

    def on_after_backward(self, model: nn.Module) -> None:
        """After backward, before ``optimizer.step()`` (e.g. Network Slimming's s·sign(γ))."""

    def on_after_step(self, model: nn.Module) -> None:
        """Right after ``optimizer.step()`` (e.g. re-apply a hard mask)."""

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """After each training epoch (0-based), before evaluation (e.g. MFP's soft pruning)."""

    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed run needs (tensors and plain containers only), or None."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; a pruner that keeps no state refuses one."""
        if state:
            raise DetpruneError(f"{type(self).__name__} keeps no state, but the checkpoint holds one")

    def plan(self, model: nn.Module, graph: ChannelGraph, ctx: PruneContext) -> PruningPlan:
        """Which channels of each prunable group survive (never empty); must not change the model's structure."""
        raise NotImplementedError

    def plot(self, out_dir: str | Path) -> Path | list[Path] | None:
        """Write the pruner's figures into ``out_dir``; return their paths (None: nothing to plot)."""
        return None


class Compensator:
    """Repairs the kept weights of a pruned model, in place, using the original model.

    ``compensate`` runs once after surgery; ``report`` (JSON-ready) is what it did, for report.md.
    """

    report: dict[str, Any] | None = None

    def compensate(self, original: nn.Module, pruned: nn.Module, plan: PruningPlan, ctx: PruneContext) -> None:
        """Rewrite ``pruned``'s kept weights in place; never change a shape; a no-op plan changes nothing."""
        raise NotImplementedError


class ModelAdapter:
    """Owns one model family: its definition, loss, decoding and protected layers.

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

    task: Task = "classification"
    name: str | None = None
    args: dict[str, Any]

    def build(self) -> nn.Module:
        """A freshly initialised dense model for ``self.args``."""
        raise NotImplementedError

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs for tracing and measuring, at the model's default input size."""
        raise _lacks(self, "example_inputs", "tracing and measuring")

    def loss(self, outputs: Any, targets: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss and its named parts (for logging)."""
        raise _lacks(self, "loss", "training")

    def decode(self, outputs: Any, metas: Any) -> list[Any]:
        """Model outputs to predictions in original image coordinates."""
        raise _lacks(self, "decode", "evaluation")


def _lacks(adapter: Any, method: str, needed_for: str) -> DetpruneError:
    return DetpruneError(f"model adapter {type(adapter).__name__} does not define {method}(), which {needed_for} needs")

    def protected(self, model: nn.Module) -> list[str]:
        """Qualified names of modules whose output channels must never be pruned."""
        return []


#: per plugin kind: its base class and the methods a plugin must define itself
BASES: dict[str, tuple[type, tuple[str, ...]]] = {
    "criterion": (Criterion, ("score",)),
    "pruner": (Pruner, ("plan",)),
    "compensator": (Compensator, ("compensate",)),
    "adapter": (ModelAdapter, ("build",)),  # loss/decode/example_inputs: a clear error when first needed
}


def missing_methods(kind: str, obj: Any) -> list[str]:
    """Required methods ``obj`` (a class or an instance) lacks or leaves to the base class."""
    base, required = BASES[kind]
    missing = []
    for name in required:
        fn = getattr(obj, name, None)
        inherited = getattr(base, name)
        own = getattr(fn, "__func__", fn)
        if not callable(fn) or own is inherited:
            missing.append(name)
    return missing


def conform(kind: str, obj: Any) -> Any:
    """``obj`` itself when it extends the kind's base class, else a wrapper that forwards the
    methods ``obj`` has and supplies the base class's no-ops for the rest (duck-typed plugins)."""
    base, _ = BASES[kind]
    if isinstance(obj, base):
        return obj
    body: dict[str, Any] = {"__doc__": type(obj).__doc__}
    for name, value in vars(base).items():  # data attributes (``report``, ``task``) must not hide the object's
        if not name.startswith("_") and not callable(value) and not isinstance(value, (staticmethod, classmethod)):
            body[name] = _forwarded(name, value)
    shim = _Forward.__new__(type(f"{type(obj).__name__}", (_Forward, base), body))
    object.__setattr__(shim, "_inner", obj)
    for name in dir(base):
        if not name.startswith("_") and callable(getattr(base, name)) and callable(getattr(obj, name, None)):
            object.__setattr__(shim, name, getattr(obj, name))
    return shim


def _forwarded(name: str, default: Any) -> property:
    def get(self: Any) -> Any:
        return getattr(object.__getattribute__(self, "_inner"), name, default)

    def put(self: Any, value: Any) -> None:
        setattr(object.__getattribute__(self, "_inner"), name, value)

    return property(get, put)


def unwrap(obj: Any) -> Any:
    """The plugin's own object behind a :func:`conform` wrapper (itself when not wrapped)."""
    return obj.__dict__.get("_inner", obj) if isinstance(obj, _Forward) else obj


class _Forward:
    """Attribute reads and writes go to the wrapped object (its ``report``, ``history`` ...)."""

    _inner: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_inner"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_inner"), name, value)


def score_groups(
    criterion: Criterion,
    model: nn.Module,
    graph: ChannelGraph,
    ctx: PruneContext,
    groups: Iterable[ChannelGroup] | None = None,
) -> dict[int, torch.Tensor]:
    """``{group id: scores}`` for ``groups`` (default: every prunable group), between prepare and reset."""
    criterion = conform("criterion", criterion)
    criterion.prepare(model, graph, ctx)
    try:
        with torch.no_grad():
            return {
                g.id: criterion.score(model, g, ctx) for g in (graph.prunable_groups() if groups is None else groups)
            }
    finally:
        criterion.reset()

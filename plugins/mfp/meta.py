"""Meta-attributes for MFP: "a property of the neural network at the current state" (arXiv 1904.03961,
abstract) whose change, when a criterion's choice of filters is zeroed, decides which criterion the
next pruning step follows (../shared/research/algorithms.md §2.2, [proposal] part: the paper's body
could not be read, so the attribute is a hook).

A meta-attribute is any callable ``fn(model, batches, adapter) -> float``; ``batches`` is the fixed
held-out batch list (already on the model's device), ``adapter`` the model adapter (its ``loss``).
Built in:

* ``loss`` (default): the mean task loss over the held-out batches, in eval mode, no gradients.
* ``weight-mean``: the mean absolute weight of every conv/linear kernel (tensors with 2+ dims).
* ``sparsity``: the fraction of those kernel entries that are exactly zero.

Names of the form ``"package.module:function"`` import a user's function.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from detprune.errors import DetpruneError

MetaAttribute = Callable[[nn.Module, Sequence[Any], Any], float]


def loss(model: nn.Module, batches: Sequence[Any], adapter: Any) -> float:
    """Mean ``adapter.loss`` over ``batches`` (``(images, targets, ...)``), eval mode, no grad."""
    if adapter is None:
        raise DetpruneError("mfp: meta='loss' needs the model adapter (bind a PruneContext with ctx.adapter)")
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for images, targets, *_ in batches:
                value, _ = adapter.loss(model(images), targets)
                total += float(value)
    finally:
        model.train(was_training)
    return total / max(len(batches), 1)


def _kernels(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters() if p.dim() >= 2]


def weight_mean(model: nn.Module, batches: Sequence[Any] = (), adapter: Any = None) -> float:
    """Mean |w| over every conv/linear kernel."""
    ks = _kernels(model)
    return float(sum(k.abs().sum() for k in ks) / max(sum(k.numel() for k in ks), 1))


def sparsity(model: nn.Module, batches: Sequence[Any] = (), adapter: Any = None) -> float:
    """Fraction of conv/linear kernel entries that are exactly zero."""
    ks = _kernels(model)
    return float(sum((k == 0).sum() for k in ks) / max(sum(k.numel() for k in ks), 1))


META_ATTRIBUTES: dict[str, MetaAttribute] = {"loss": loss, "weight-mean": weight_mean, "sparsity": sparsity}

#: meta-attributes that read the held-out batches (the others need no data).
NEEDS_DATA = frozenset({"loss"})


def resolve(meta: str | MetaAttribute) -> tuple[str, MetaAttribute]:
    """``(display name, callable)`` for a built-in name, a ``"module:function"`` path or a callable."""
    if callable(meta):
        return getattr(meta, "__name__", type(meta).__name__), meta
    if not isinstance(meta, str):
        raise DetpruneError(f"mfp: meta must be a name or a callable, got {meta!r}")
    if meta in META_ATTRIBUTES:
        return meta, META_ATTRIBUTES[meta]
    if ":" in meta:
        mod, _, attr = meta.partition(":")
        try:
            fn = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as exc:
            raise DetpruneError(f"mfp: cannot import meta-attribute {meta!r}: {exc}") from exc
        if not callable(fn):
            raise DetpruneError(f"mfp: meta-attribute {meta!r} is not callable")
        return meta, fn
    raise DetpruneError(
        f"mfp: unknown meta-attribute {meta!r}; known: {', '.join(META_ATTRIBUTES)}, "
        "or 'package.module:function' taking (model, batches, adapter)"
    )

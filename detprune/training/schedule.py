"""Optimisers and the learning-rate schedule the Trainer uses.

The schedule is a linear warm-up followed by a half-cosine decay (Loshchilov & Hutter, SGDR,
ICLR 2017, eq. 5, without restarts), stepped once per optimiser step. It is a pure function of the
step count, wrapped in ``torch.optim.lr_scheduler.LambdaLR``: a checkpoint stores only the step
counter, so resuming a finished run with a larger ``epochs`` recomputes the curve for the new
length and continues from the step where the run stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from detprune.errors import DetpruneError

OPTIMIZERS = ("sgd", "adamw")


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """LR multiplier at optimiser step ``step`` (0-based).

    Linear from ``1/(warmup_steps+1)`` to 1 over ``warmup_steps`` steps, then cosine from 1 down to
    ``min_factor`` at ``total_steps``; past the end it stays at ``min_factor``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_factor: float = 0.0
) -> LambdaLR:
    """``LambdaLR`` over :func:`warmup_cosine`; its state_dict holds plain numbers only."""

    def factor(step: int) -> float:  # a plain function: LambdaLR does not pickle it into state
        return warmup_cosine(step, warmup_steps=warmup_steps, total_steps=total_steps, min_factor=min_factor)

    return LambdaLR(optimizer, lr_lambda=factor)


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """SGD with momentum (the pruning papers' recipes) or AdamW (CenterNet-style detectors).

    ``fused`` picks the fused CUDA kernels when every parameter lives on a GPU.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise DetpruneError("the model has no trainable parameter")
    kw = {"fused": True} if fused else {}
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay, **kw
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)
    raise DetpruneError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")

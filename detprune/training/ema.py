"""Exponential moving average of a model's weights, with a warm-up of the decay.

``d_t = decay * (1 - exp(-t / tau))`` after ``t`` updates (the ramp YOLOv5's ``ModelEMA`` uses),
so the average follows the weights closely early on, when they move fast, instead of averaging
in the random initialisation for thousands of steps as a fixed 0.9999 would. Buffers (BN running
statistics) are averaged too; integer buffers are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Holds ``module``, a frozen copy of the model whose weights are the running average."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau)) if self.tau > 0 else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after each optimiser step)."""
        self.updates += 1
        d = self.current_decay()
        avg_f, cur_f = [], []
        for avg, cur in zip(_tensors(self.module), _tensors(model), strict=True):
            if avg.dtype.is_floating_point:
                avg_f.append(avg)
                cur_f.append(cur.detach().to(avg.dtype))
            else:
                avg.copy_(cur)
        if avg_f:
            torch._foreach_lerp_(avg_f, cur_f, 1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]

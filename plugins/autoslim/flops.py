"""FLOPs of any width configuration without building it (AutoSlim §3.2 needs thousands of them).

One ``torch.utils.flop_counter`` pass over the dense model gives each module's FLOPs (2·MAC, the
convention of :func:`detprune.eval.measure.count_flops`). A convolution or linear layer costs
``k·C_in·C_out`` per output position, so its FLOPs at a narrower width are its dense FLOPs times
the kept fraction of its input channels times the kept fraction of its output channels (a
depthwise conv, a per-channel "through" module, scales with its one kept fraction); the rest of
the model (ops outside recorded modules) is a constant. The model is exact for conv, conv-
transpose (grouped too) and linear layers; ``verify`` checks it against a counted pruned model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detprune.graph.capture import evaluating


class FlopModel:
    """``flops(keep_raw)``: FLOPs of the network that keeps the raw channel ids marked in ``keep_raw``."""

    def __init__(self, model: nn.Module, graph, inputs: tuple[Any, ...]):
        with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
        counts = counter.get_flop_counts()
        self.dense = float(counter.get_total_flops())
        prefix = type(model).__name__ + "."
        recorded = set(graph.records)
        self.terms: list[tuple[float, list[np.ndarray]]] = []
        modelled = 0.0
        for name, rec in graph.records.items():
            f = float(sum(counts.get(prefix + name, {}).values()))
            # a recorded module nested in another counts once, in the innermost one
            f -= sum(float(sum(counts.get(prefix + d, {}).values())) for d in _children(name, recorded))
            if f <= 0:
                continue
            axes = [np.asarray(ids) for ids in (rec.out, rec.inp, rec.through) if ids is not None]
            self.terms.append((f, axes))
            modelled += f
        self.const = self.dense - modelled

    def __call__(self, keep_raw: np.ndarray) -> float:
        total = self.const
        for f, axes in self.terms:
            for ids in axes:
                f *= float(keep_raw[ids].mean())
            total += f
        return total


def _children(name: str, recorded: set[str]) -> list[str]:
    """Recorded modules strictly inside ``name`` with no recorded module between them and it."""
    inner = [d for d in recorded if d.startswith(name + ".")] if name else [d for d in recorded if d]
    return [d for d in inner if not any(d.startswith(o + ".") for o in inner if o != d)]

"""``trace(model, example_inputs)``: capture one forward pass and build its ChannelGraph.

Why run-time capture rather than ``torch.fx``: ``symbolic_trace`` fails on models whose forward
branches on tensor shapes or unpacks ``x.size()`` (torchvision's detection models, YOLO-style
blocks) and needs each such model patched; ``torch.export`` handles more but cost 2-12x the capture
on the zoo, fails on Faster R-CNN, and rewrites modules into ATen ops whose weights must be mapped
back. A ``TorchFunctionMode`` sees every torch call of one real eval-mode forward with concrete
shapes, Python control flow included, at about the cost of fx (benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from detprune.errors import GraphError
from detprune.graph.capture import run_capture
from detprune.graph.groups import ChannelGraph, build_graph


def as_inputs(example_inputs: Any) -> tuple[Any, ...]:
    """A tensor, or a tuple/list of positional inputs, as a tuple."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise GraphError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def trace(
    model: nn.Module, example_inputs: Any, protected: Iterable[str] = (), leaves: Sequence[str | type] = ()
) -> ChannelGraph:
    """Find every group of coupled channels of ``model`` at the shape of ``example_inputs``.

    :param protected: qualified module names (or prefixes) whose output channels must stay,
        e.g. a detection head's output convs; groups reaching a model output are protected
        automatically.
    :param leaves: module names (or module classes) whose internals are not followed: their
        input channels are kept and their outputs are a fresh, unprunable channel space.
    """
    inputs = as_inputs(example_inputs)
    try:
        cap = run_capture(model, inputs, leaves)
    except GraphError:
        raise
    except Exception as exc:  # the model itself failed on the inputs
        raise GraphError(f"the model's forward failed while tracing: {type(exc).__name__}: {exc}") from exc
    return build_graph(cap, model, inputs, protected, leaves)

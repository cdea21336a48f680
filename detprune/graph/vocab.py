"""The op vocabulary: which handler follows channels through which torch function.

Names are normalised so that ``torch.add``, ``Tensor.add``, ``Tensor.add_``, ``x + y`` and
``x += y`` all reach one handler. Pointwise ops are recognised by ATen's own ``pointwise`` tag
(``torch.Tag.pointwise``), so the long tail of activations and arithmetic needs no list of ours;
the few pointwise Python-level functions without an ATen twin of the same name are listed in
``ops_elementwise.PASS``. Anything else that touches a followed tensor is an error naming the op.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from detprune.graph.ops import elementwise as ops_elementwise
from detprune.graph.ops import layers as ops_layers
from detprune.graph.ops import shape as ops_shape

PRODUCERS = {n for n in ops_layers.HANDLERS if n.startswith(("conv", "linear"))}

_DUNDER_BINARY = {
    "add": "add",
    "sub": "sub",
    "mul": "mul",
    "truediv": "div",
    "floordiv": "floor_divide",
    "mod": "remainder",
    "pow": "pow",
    "matmul": "matmul",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
    "lshift": "bitwise_left_shift",
    "rshift": "bitwise_right_shift",
}


@functools.cache
def op_name(func: Any) -> str:
    """``Tensor.__iadd__`` -> ``add``; ``F._max_pool2d`` -> ``max_pool2d``; ``Tensor.T`` -> ``T``."""
    name = getattr(func, "__name__", None) or repr(func)
    if name == "__get__":  # a Tensor property such as .T, .mT, .data, .shape
        return getattr(getattr(func, "__self__", None), "__name__", name)
    if name.startswith("__") and name.endswith("__"):
        core = name[2:-2]
        if core in _DUNDER_BINARY:
            return _DUNDER_BINARY[core]
        if core[:1] in ("i", "r") and core[1:] in _DUNDER_BINARY:
            return _DUNDER_BINARY[core[1:]]
        return core  # getitem, setitem, neg, eq, ...
    name = name.lstrip("_")
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name


@functools.cache
def is_pointwise(name: str) -> bool:
    """True when ATen tags an op of this name ``pointwise`` (elementwise with broadcasting)."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return False
    try:
        return any(torch.Tag.pointwise in getattr(packet, o).tags for o in packet.overloads())
    except Exception:  # noqa: BLE001 - an odd packet is simply not pointwise
        return False


def handler_for(name: str):
    h = ops_layers.HANDLERS.get(name) or ops_shape.HANDLERS.get(name)
    if h is not None:
        return h
    if name in ops_elementwise.PASS:
        return ops_elementwise.passthrough
    if is_pointwise(name):
        return ops_elementwise.pointwise
    return None


def dispatch(rec, func, args: tuple, kwargs: dict, out: Any) -> None:
    """Follow channels from the tracked inputs of ``func`` to its outputs (or raise)."""
    name = op_name(func)
    if name != "setitem" and not _has_tensor(out):
        return  # sizes, dims, booleans, Python numbers: nothing to follow
    handler = handler_for(name)
    if handler is None:
        raise rec.error(name, f"no rule maps its channels (got {_describe(args)})")
    handler(rec, name, args, kwargs, out)


def param_lineage(rec, func, args: tuple, kwargs: dict, out: Any) -> None:
    """Remember that ``out`` is a reshaped view of a 1-D-like parameter (e.g. ``gamma[:, None, None]``)."""
    if not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
        return
    name = op_name(func)
    if name not in ops_shape.VIEW_LIKE:
        return
    src = args[0]
    if id(src) in rec.owner:
        mname, pname = rec.owner[id(src)]
        axes = [i for i, s in enumerate(src.shape) if s > 1]
        if len(axes) != 1:
            return
        base = (mname, pname, axes[0])
    elif id(src) in rec.lineage:
        base = rec.lineage[id(src)]
    else:
        return
    if sum(1 for s in out.shape if s > 1) == 1 and out.numel() == src.numel():
        rec.watch(out)
        rec.lineage[id(out)] = base


def _has_tensor(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return True
    if isinstance(out, (list, tuple)):
        return any(isinstance(o, torch.Tensor) for o in out)
    return False


def _describe(args: tuple) -> str:
    parts = []
    for a in args[:4]:
        if isinstance(a, torch.Tensor):
            parts.append(f"tensor{list(a.shape)}")
        else:
            parts.append(type(a).__name__)
    return ", ".join(parts) or "no arguments"

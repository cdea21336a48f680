"""Handlers for parametrised ops: conv, transposed conv, linear, norms, PReLU.

An op is attributed to the module that owns its weight (``id(param)`` -> qualified name), so a
module that calls ``F.conv2d(x, self.weight)`` itself is handled like ``nn.Conv2d``, and a module
called twice shares one set of output ids (its filters are the same filters).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_MISSING = object()


def arg(args: tuple, kwargs: dict, pos: int, name: str, default: Any = None) -> Any:
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


def varying(ids: np.ndarray) -> list[int]:
    return [a for a, s in enumerate(ids.shape) if s > 1]


def axis_ids(rec, ids: np.ndarray | None, ax: int, n: int, op: str) -> np.ndarray | None:
    """The ids along axis ``ax`` as a flat array of length ``n`` (``None`` when untracked)."""
    if ids is None:
        return None
    bad = [a for a in varying(ids) if a != ax]
    if bad:
        raise rec.error(op, f"its channel axis is {ax} but the input's channels lie on axis {bad[0]}")
    flat = ids.reshape(-1)
    return flat if flat.size == n else np.full(n, flat[0], dtype=np.int64)


def shaped(flat: np.ndarray, ndim: int, ax: int) -> np.ndarray:
    shape = [1] * ndim
    shape[ax] = flat.size
    return flat.reshape(shape)


def _owned(rec, t: Any, module: str) -> str | None:
    if not isinstance(t, torch.Tensor):
        return None
    o = rec.owner.get(id(t))
    return o[1] if o is not None and o[0] == module else None


def conv(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``conv{1,2,3}d`` and ``conv_transpose{1,2,3}d``: weight ``[out, in/g, k..]`` or ``[in, out/g, k..]``."""
    x, w, b = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    transposed = name.startswith("conv_transpose")
    groups = int(arg(args, kwargs, 6, "groups", 1))
    k = int(name[-2])
    ax_in, ax_out = x.dim() - k - 1, out.dim() - k - 1
    c_in, c_out = x.shape[ax_in], out.shape[ax_out]
    x_ids = axis_ids(rec, rec.ids(x), ax_in, c_in, name)
    owner = rec.owner.get(id(w))
    if owner is None:  # a weight computed in forward: we cannot slice it, so nothing here moves
        if x_ids is not None:
            rec.fix(x_ids, f"input of '{name}' with a computed weight in {rec.where()}")
        rec.set(
            out,
            shaped(
                rec.mint(c_out, f"{name} in {rec.where()}", fixed=f"output of '{name}' with a computed weight"),
                out.dim(),
                ax_out,
            ),
        )
        return
    mname, wname = owner
    bname = _owned(rec, b, mname)
    if x_ids is None:
        x_ids = rec.mint(c_in, f"untracked input of {mname}", fixed=f"untracked input of '{mname}'")
    if groups > 1 and groups == c_in:  # depthwise: per-channel filters pass the channels through
        mult = c_out // c_in
        r, _ = rec.record(mname, "dwconv")
        r.groups, r.transposed, r.mult = groups, transposed, mult
        r.params = {"through": [(wname, 0)] + ([(bname, 0)] if bname else [])}
        through = rec.merge_axis(r, "through", np.repeat(x_ids, mult))
        rec.set(out, shaped(through, out.dim(), ax_out))
        return
    r, new = rec.record(mname, "conv")
    r.groups, r.transposed = groups, transposed
    w_out, w_in = (1, 0) if transposed else (0, 1)
    r.params = {"out": [(wname, w_out)] + ([(bname, 0)] if bname else []), "in": [(wname, w_in)]}
    rec.merge_axis(r, "inp", x_ids)
    if new:
        r.out = rec.mint(c_out, mname)
        if groups > 1:
            rec.constrain(list(x_ids.reshape(groups, -1)), f"input groups of grouped {name} '{mname}'")
            rec.constrain(list(r.out.reshape(groups, -1)), f"output groups of grouped {name} '{mname}'")
    rec.set(out, shaped(r.out, out.dim(), ax_out))


def linear(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``F.linear``: weight ``[out, in]``; channels are the last axis."""
    x, w, b = arg(args, kwargs, 0, "input"), arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    ax = x.dim() - 1
    x_ids = axis_ids(rec, rec.ids(x), ax, x.shape[ax], name)
    owner = rec.owner.get(id(w))
    c_out = out.shape[-1]
    if owner is None:
        if x_ids is not None:
            rec.fix(x_ids, f"input of 'linear' with a computed weight in {rec.where()}")
        rec.set(
            out,
            shaped(
                rec.mint(c_out, f"linear in {rec.where()}", fixed="output of 'linear' with a computed weight"),
                out.dim(),
                out.dim() - 1,
            ),
        )
        return
    mname, wname = owner
    bname = _owned(rec, b, mname)
    r, new = rec.record(mname, "linear")
    r.params = {"out": [(wname, 0)] + ([(bname, 0)] if bname else []), "in": [(wname, 1)]}
    if x_ids is not None:
        rec.merge_axis(r, "inp", x_ids)
    if new:
        r.out = rec.mint(c_out, mname)
    rec.set(out, shaped(r.out, out.dim(), out.dim() - 1))


def _norm(
    rec, name: str, x: torch.Tensor, out: Any, ax: int, tensors: list[Any], norm_groups: int | None = None
) -> None:
    x_ids = rec.ids(x)
    c = x.shape[ax]
    flat = axis_ids(rec, x_ids, ax, c, name)
    owner = next((rec.owner[id(t)] for t in tensors if isinstance(t, torch.Tensor) and id(t) in rec.owner), None)
    if owner is not None:
        mname = owner[0]
        names = [_owned(rec, t, mname) for t in tensors]
        r, _ = rec.record(mname, "prelu" if name == "prelu" else "norm")
        r.params = {"through": [(p, 0) for p in names if p]}
        r.norm_groups = norm_groups
        rec.merge_axis(r, "through", flat)
    rec.set(out, x_ids)


def batch_norm(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``batch_norm``/``instance_norm``(input, running_mean, running_var, weight, bias, ...)."""
    x = args[0]
    tensors = [
        arg(args, kwargs, i, n) for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    ]
    _norm(rec, name, x, out, 1 if x.dim() > 1 else 0, tensors)


def group_norm(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """GroupNorm: statistics per block of C/G channels, so blocks keep equal counts (unless G == C)."""
    x, g = args[0], int(arg(args, kwargs, 1, "num_groups"))
    tensors = [arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")]
    ids = rec.ids(x)
    c = x.shape[1]
    flat = axis_ids(rec, ids, 1, c, name)
    if 1 < g < c:
        rec.constrain(list(flat.reshape(g, -1)), f"the {g} groups of group_norm")
    _norm(rec, name, x, out, 1, tensors, norm_groups=g)


def layer_norm(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """LayerNorm over the trailing axes: per-channel affine when it normalises the channel axis alone."""
    x, shape = args[0], tuple(arg(args, kwargs, 1, "normalized_shape"))
    ids = rec.ids(x)
    normed = set(range(x.dim() - len(shape), x.dim()))
    touched = [a for a in varying(ids) if a in normed]
    if not touched:
        rec.set(out, ids)
        return
    if len(shape) == 1 and touched == [x.dim() - 1]:
        _norm(rec, name, x, out, x.dim() - 1, [arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")])
        return
    rec.fix(ids, f"layer_norm over {list(shape)} (channels and other axes together) in {rec.where()}")
    rec.set(out, ids)


def prelu(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    if w.numel() == 1:
        rec.set(out, rec.ids(x))
        return
    _norm(rec, name, x, out, 1 if x.dim() > 1 else 0, [w])


HANDLERS = {
    **{f"conv{k}d": conv for k in (1, 2, 3)},
    **{f"conv_transpose{k}d": conv for k in (1, 2, 3)},
    "linear": linear,
    "batch_norm": batch_norm,
    "instance_norm": batch_norm,
    "group_norm": group_norm,
    "layer_norm": layer_norm,
    "prelu": prelu,
}

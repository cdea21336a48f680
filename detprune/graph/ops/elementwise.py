"""Handlers for ops that keep the channel layout: pointwise arithmetic, activations, pooling,
resampling, and reductions.

Pointwise ops of two followed tensors **union** their ids position by position: that is how a
residual ``x + f(x)`` or an SE gate ``x * s`` couples the producers on both sides. A tensor that
is broadcast along the other's channel axis (a one-channel spatial gate) unions nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detprune.graph.ops.layers import arg, varying
from detprune.graph.records import ParamSlot, flat_tensors


def align(ids: np.ndarray, nd: int) -> np.ndarray:
    """Left-pad an id array with unit axes to rank ``nd`` (numpy broadcasting rules)."""
    return ids.reshape((1,) * (nd - ids.ndim) + ids.shape) if ids.ndim < nd else ids


def out_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    return []


def unify(rec, name: str, operands: list[torch.Tensor], nd: int) -> np.ndarray | None:
    """Union the ids of followed operands broadcast together; fix channels met by fixed-size tensors."""
    tracked = [(t, align(rec.ids(t), nd)) for t in operands if rec.ids(t) is not None and t.dim() <= nd]
    if not tracked:
        return None
    base_t, base = max(tracked, key=lambda p: len(varying(p[1])))
    vb = varying(base)
    for t, ids in tracked:
        if t is base_t:
            continue
        vo = varying(ids)
        if not vo:
            continue  # a one-channel (or spatial) gate broadcast over the channels
        if vo != vb:
            raise rec.error(name, f"it broadcasts channels on axis {vo} against channels on axis {vb}")
        rec.union(base, ids)
    for t in operands:
        if rec.ids(t) is not None or t.dim() == 0 or t.numel() == 1:
            continue
        shape = (1,) * (nd - t.dim()) + tuple(t.shape)
        hit = [a for a in vb if shape[a] > 1]
        if not hit:
            continue
        if not _param_slot(rec, t, base, vb, nd):
            rec.fix(base, f"combined with a tensor of fixed channel count by '{name}' in {rec.where()}")
    return base


def _param_slot(rec, t: torch.Tensor, base: np.ndarray, vb: list[int], nd: int) -> bool:
    """A per-channel parameter (or a reshaped view of one) becomes a sliceable 'through' slot."""
    if len(vb) != 1:
        return False
    src = rec.lineage.get(id(t))
    if src is None and id(t) in rec.owner:
        axes = [i for i, s in enumerate(t.shape) if s > 1]
        if len(axes) != 1:
            return False
        src = (*rec.owner[id(t)], axes[0])
    if src is None:
        return False
    shape = (1,) * (nd - t.dim()) + tuple(t.shape)
    if [a for a, s in enumerate(shape) if s > 1] != vb:
        return False
    module, param, axis = src
    key = (module, param, axis)
    flat = base.reshape(-1)
    slot = rec.param_slots.get(key)
    if slot is None:
        rec.param_slots[key] = ParamSlot(module, param, axis, flat.copy(), order=len(rec.param_slots))
    else:
        rec.union(slot.ids, flat)
    return True


def pointwise(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    outs = out_tensors(out)
    if not outs:
        return
    nd = outs[0].dim()
    base = unify(rec, name, flat_tensors(args, kwargs), nd)
    for o in outs:
        if o.dim() == nd:
            rec.set(o, base)


def passthrough(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Unary ops and casts: the output has the first tensor argument's channels."""
    src = next((a for a in flat_tensors(args, kwargs)), None)
    ids = rec.ids(src)
    for o in out_tensors(out):
        if ids is not None and o.dim() == ids.ndim:
            rec.set(o, ids)


def spatial(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Pooling and resampling act on the trailing spatial axes only."""
    x = args[0] if args else kwargs.get("input")
    ids = rec.ids(x)
    if ids is None:
        return
    digits = [c for c in name if c.isdigit()]
    k = int(digits[-1]) if digits and name[-2:-1].isdigit() else x.dim() - 2
    bad = [a for a in varying(ids) if a >= x.dim() - k]
    if bad:
        raise rec.error(name, f"it pools/resamples axis {bad[0]}, which carries channels")
    for o in out_tensors(out):
        if o.dim() == ids.ndim:
            rec.set(o, ids)


def _dims(dim: Any, nd: int) -> list[int]:
    if dim is None:
        return list(range(nd))
    if isinstance(dim, (list, tuple)):
        return sorted(int(d) % nd for d in dim)
    return [int(dim) % nd]


def reduction(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """sum/mean/amax/... over ``dim``: reducing every channel axis consumes the channels."""
    x = args[0]
    if name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor):
        return pointwise(rec, name, args, kwargs, out)
    ids = rec.ids(x)
    if ids is None:
        return
    nd = x.dim()
    if name == "norm":
        dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    else:
        dim = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], torch.Tensor) else None)
    if isinstance(dim, str):
        raise rec.error(name, "named dimensions are not supported")
    red = _dims(dim, nd) if nd else []
    vary = varying(ids)
    hit = [a for a in vary if a in red]
    if vary and len(hit) == len(vary):
        return  # the channels are consumed (e.g. a spatial-attention mean over channels)
    arr = ids
    if hit:  # reducing a sub-axis of a split channel axis: its members live or die together
        ref = arr
        for a in hit:
            ref = ref.take([0], axis=a)
        rec.union(arr, ref)
        arr = ref
    kept = [s for a, s in enumerate(arr.shape) if a not in red]
    for o in out_tensors(out):
        if o.dim() == nd:
            rec.set(o, arr[tuple(slice(0, 1) if a in red else slice(None) for a in range(nd))].copy())
        elif o.dim() == nd - len(red):
            rec.set(
                o, np.array(arr[tuple(0 if a in red else slice(None) for a in range(nd))], dtype=np.int64).reshape(kept)
            )


def cumulative(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """cumsum/cummax/sort/topk along channels mix or reorder them: those channels are fixed."""
    x = args[0]
    ids = rec.ids(x)
    if ids is None:
        return
    dim = arg(args, kwargs, 2, "dim", -1) if name == "topk" else arg(args, kwargs, 1, "dim", -1)
    if dim is not None and int(dim) % max(x.dim(), 1) in varying(ids):
        rec.fix(ids, f"'{name}' along the channel axis in {rec.where()}")
    for o in out_tensors(out):
        if o.dim() == ids.ndim and o.dtype != torch.long:
            rec.set(o, ids)


PASS = {
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "feature_dropout",
    "contiguous",
    "clone",
    "detach",
    "to",
    "float",
    "double",
    "half",
    "bfloat16",
    "cpu",
    "cuda",
    "type",
    "type_as",
    "requires_grad",
    "data",
    "softmax",
    "log_softmax",
    "softmin",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "rand_like",
    "randn_like",
    "hardswish",
    "log_sigmoid",
    "logsigmoid",
    "softsign",
    "tanhshrink",
    "rrelu",
    "relu6",
    "normalize",
    "local_response_norm",
    "real",
    "conj",
    "resolve_conj",
    "resolve_neg",
    "int",
    "long",
    "bool",
    "nan_to_num",
    "hardsigmoid",
    "silu",
    "mish",
    "gelu",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "threshold",
    "hardtanh",
    "softplus",
    "relu",
    "sigmoid",
    "tanh",
}

SPATIAL = [
    *(
        f"{p}{k}d"
        for k in (1, 2, 3)
        for p in (
            "max_pool",
            "avg_pool",
            "lp_pool",
            "adaptive_avg_pool",
            "adaptive_max_pool",
            "fractional_max_pool",
            "max_unpool",
        )
    ),
    *(f"max_pool{k}d_with_indices" for k in (1, 2, 3)),
    *(f"adaptive_max_pool{k}d_with_indices" for k in (1, 2, 3)),
    "interpolate",
    "upsample",
    "upsample_nearest",
    "upsample_bilinear",
    "grid_sample",
]

REDUCE = [
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "std",
    "var",
    "prod",
    "logsumexp",
    "norm",
    "argmax",
    "argmin",
    "all",
    "any",
    "count_nonzero",
    "median",
    "nansum",
    "nanmean",
    "nanmedian",
    "mode",
    "std_mean",
    "var_mean",
    "aminmax",
]

CUMULATIVE = ["cumsum", "cumprod", "cummax", "cummin", "logcumsumexp", "sort", "argsort", "topk"]

HANDLERS = {
    **{n: spatial for n in SPATIAL},
    **{n: reduction for n in REDUCE},
    **{n: cumulative for n in CUMULATIVE},
}


def compress(arr: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the ids do not change to size 1."""
    for a in range(arr.ndim):
        if arr.shape[a] > 1 and (arr == arr.take([0], axis=a)).all():
            arr = arr.take([0], axis=a)
    return np.array(arr, dtype=np.int64)

"""Handlers for indexing: ``x[...]``, ``x[...] = v``, narrow, select, index_select.

Slicing a channel axis at positions written in the code (``x[:, :16]``) only stays correct after
pruning if every channel before the cut survives, so those channels are fixed; a full slice or an
index on a spatial axis leaves channels alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detprune.graph.ops.elementwise import align, compress
from detprune.graph.ops.layers import arg, varying


def _c(a: Any) -> np.ndarray:
    return np.array(a, dtype=np.int64)


def _norm_index(idx: Any, nd: int) -> tuple | None:
    """Expand ``...`` in a basic index; ``None`` for an advanced (tensor/list/bool) index."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    for i in idx:
        if not (i is None or i is Ellipsis or isinstance(i, (int, slice, torch.SymInt))):
            return None
        if isinstance(i, bool):
            return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        return idx[:k] + (slice(None),) * (nd - n_real) + idx[k + 1 :]
    return idx + (slice(None),) * (nd - n_real)


def _cut(rec, ids: np.ndarray, ax: int, size: int, i: Any, op: str) -> None:
    """Fix the channels a constant slice or index of the channel axis depends on."""
    if isinstance(i, slice):
        start, stop, step = i.indices(size)
        if (start, stop, step) == (0, size, 1):
            return
        neg = any(v is not None and v < 0 for v in (i.start, i.stop))
        upto = size if neg or step != 1 else (stop if stop < size else start)
    else:
        upto = size if int(i) < 0 else int(i) + 1
    slab = np.take(ids, np.arange(min(upto, ids.shape[ax])), axis=ax)
    rec.fix(slab.ravel(), f"'{op}' takes channels at fixed positions in {rec.where()}")


def index_ids(rec, x: torch.Tensor, ids: np.ndarray, idx: Any, op: str, fix: bool = True) -> np.ndarray:
    norm = _norm_index(idx, x.dim())
    vary = set(varying(ids))
    if norm is None:  # advanced indexing: apply the same index to the (expanded) ids
        if fix and vary:
            rec.fix(ids, f"'{op}' with a tensor index on a tensor with channels in {rec.where()}")
        t = torch.from_numpy(_c(ids)).expand(x.shape)
        idx_cpu = tuple(
            i.cpu() if isinstance(i, torch.Tensor) else i for i in (idx if isinstance(idx, tuple) else (idx,))
        )
        return compress(t[idx_cpu].numpy())
    np_idx, ax = [], 0
    for i in norm:
        if i is None:
            np_idx.append(None)
            continue
        on_channels = ax in vary
        if on_channels and fix:
            _cut(rec, ids, ax, x.shape[ax], i, op)
        if isinstance(i, slice):
            np_idx.append(i if on_channels else slice(None))
        else:
            np_idx.append(int(i) if on_channels else 0)
        ax += 1
    return _c(ids[tuple(np_idx)])


def getitem(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, ids = args[0], rec.ids(args[0])
    if ids is None or not isinstance(out, torch.Tensor):
        return
    res = index_ids(rec, x, ids, args[1], "getitem")
    if res.ndim == out.dim():
        rec.set(out, res)


def setitem(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, idx, v = args[0], args[1], args[2]
    ids, v_ids = rec.ids(x), rec.ids(v)
    if ids is None:
        raise rec.error("setitem", "it writes channels into a tensor whose channels are not followed")
    norm = _norm_index(idx, x.dim())
    vary = set(varying(ids))
    real = [i for i in norm if i is not None] if norm is not None else None
    if real is None or any(a in vary and i != slice(None) for a, i in enumerate(real)):
        raise rec.error("setitem", "it writes into part of the channel axis (use torch.cat)")
    if v_ids is not None:
        region = index_ids(rec, x, ids, idx, "setitem", fix=False)
        nd = region.ndim
        if v_ids.ndim <= nd and varying(align(v_ids, nd)):
            rec.union(region, align(v_ids, nd))


def narrow(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, ids = args[0], rec.ids(args[0])
    if ids is None:
        return
    dim, start, length = (int(arg(args, kwargs, k, n)) for k, n in ((1, "dim"), (2, "start"), (3, "length")))
    idx = [slice(None)] * x.dim()
    idx[dim % x.dim()] = slice(start, start + length)
    rec.set(out, index_ids(rec, x, ids, tuple(idx), name))


def select(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, ids = args[0], rec.ids(args[0])
    if ids is None:
        return
    dim, index = int(arg(args, kwargs, 1, "dim")), int(arg(args, kwargs, 2, "index"))
    idx = [slice(None)] * x.dim()
    idx[dim % x.dim()] = index
    rec.set(out, index_ids(rec, x, ids, tuple(idx), name))


def index_select(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, ids = args[0], rec.ids(args[0])
    if ids is None:
        return
    dim = int(arg(args, kwargs, 1, "dim")) % x.dim()
    index = arg(args, kwargs, 2, "index")
    if dim not in varying(ids):
        rec.set(out, ids)
        return
    rec.fix(ids, f"'{name}' picks channels in {rec.where()}")
    rec.set(out, _c(np.take(ids, index.cpu().numpy(), axis=dim)))


HANDLERS = {"getitem": getitem, "setitem": setitem, "narrow": narrow, "select": select, "index_select": index_select}

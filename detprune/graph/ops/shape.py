"""Handlers for ops that move, split, join or index the channel axis.

* view/reshape/flatten move ids with the data (flatten before a Linear repeats each channel
  H·W times). Splitting the channel axis into ``(g, C/g)`` assumes the leading factor ``g`` is a
  fixed group count (channel shuffle, heads) and unions the ids across it: after pruning, every
  group must keep the same channels for the later merge to put them back in the same order.
* cat along channels concatenates ids; chunk into equal pieces adds an equal-count constraint;
  split into sizes written in the code, or slicing the channel axis, fixes the channels it cuts.
* F.pad on the channel axis adds zero channels of fixed count (ResNet option-A shortcuts).

Indexing (``x[:, :4]``, narrow, select, index_select) lives in ``ops.index``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from detprune.graph.ops.elementwise import HANDLERS as ELEMENTWISE
from detprune.graph.ops.elementwise import PASS as _PASS
from detprune.graph.ops.elementwise import (
    align,
    compress,
    out_tensors,
    pointwise,
    unify,
)
from detprune.graph.ops.index import HANDLERS as INDEXING
from detprune.graph.ops.layers import arg, varying

PASS = _PASS
VIEW_LIKE = {
    "view",
    "reshape",
    "unsqueeze",
    "squeeze",
    "flatten",
    "expand",
    "expand_as",
    "getitem",
    "permute",
    "transpose",
    "contiguous",
    "to",
    "float",
    "double",
    "half",
    "type_as",
    "detach",
    "clone",
    "view_as",
    "reshape_as",
    "T",
    "mT",
    "data",
}


def _c(a: Any) -> np.ndarray:
    """A contiguous int64 copy that keeps the rank (``np.ascontiguousarray`` turns 0-d into 1-d)."""
    return np.array(a, dtype=np.int64)


def axis_groups(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Contiguous runs of axes of shapes ``a`` and ``b`` with equal products (a reshape's structure)."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        ga, gb, pa, pb = [], [], 1, 1
        if i < len(a):
            ga.append(i)
            pa *= a[i]
            i += 1  # noqa: E702
        if j < len(b):
            gb.append(j)
            pb *= b[j]
            j += 1  # noqa: E702
        while pa != pb:
            if pa < pb and i < len(a):
                ga.append(i)
                pa *= a[i]
                i += 1  # noqa: E702
            elif j < len(b):
                gb.append(j)
                pb *= b[j]
                j += 1  # noqa: E702
            else:
                break
        groups.append((ga, gb))
    return groups


def reshape_ids(rec, ids: np.ndarray, a: tuple[int, ...], b: tuple[int, ...]) -> np.ndarray:
    vary = set(varying(ids))
    if not vary:
        return ids.reshape((1,) * len(b))
    groups = axis_groups(a, b)
    hit = [bool(vary & set(ga)) for ga, _ in groups]
    full_in = [a[i] if hit[k] else 1 for k, (ga, _) in enumerate(groups) for i in ga]
    new_shape = [b[j] if hit[k] else 1 for k, (_, gb) in enumerate(groups) for j in gb]
    arr = compress(np.broadcast_to(ids, full_in).reshape(new_shape))
    for k, (_, gb) in enumerate(groups):
        vs = [j for j in gb if arr.shape[j] > 1]
        if hit[k] and len(vs) >= 2:  # channel axis split into (g, C/g): g is a fixed group count
            ref = arr
            for j in vs[:-1]:
                ref = ref.take([0], axis=j)
            rec.union(arr, ref)
            arr = ref
    return _c(arr)


def reshape(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, ids = args[0], rec.ids(args[0])
    if ids is None or not isinstance(out, torch.Tensor):
        return
    if out.numel() == 0 or x.numel() == 0:
        return
    if out.numel() != x.numel():
        raise rec.error(name, f"it changes {tuple(x.shape)} into {tuple(out.shape)}")
    rec.set(out, reshape_ids(rec, ids, tuple(x.shape), tuple(out.shape)))


def expand(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    ids = rec.ids(args[0])
    if ids is not None:
        rec.set(out, align(ids, out.dim()))


def repeat(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    ids = rec.ids(args[0])
    if ids is None:
        return
    reps = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
    reps = tuple(int(r) for r in (reps or kwargs.get("repeats", kwargs.get("dims", ()))))
    arr = align(ids, len(reps))
    tiles = [r if arr.shape[a] > 1 else 1 for a, r in enumerate(reps)]
    rec.set(out, np.tile(arr, tiles) if any(t > 1 for t in tiles) else arr)


def permute(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    ids = rec.ids(args[0])
    if ids is None:
        return
    nd = ids.ndim
    if name == "permute":
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        dims = dims or kwargs.get("dims")
        arr = ids.transpose([int(d) % nd for d in dims])
    elif name in ("transpose", "swapaxes", "swapdims"):
        d0, d1 = arg(args, kwargs, 1, "dim0"), arg(args, kwargs, 2, "dim1")
        arr = np.swapaxes(ids, int(d0) % nd, int(d1) % nd)
    elif name in ("movedim", "moveaxis"):
        arr = np.moveaxis(ids, arg(args, kwargs, 1, "source"), arg(args, kwargs, 2, "destination"))
    elif name in ("t", "mT", "mH", "adjoint") and nd >= 2:
        arr = np.swapaxes(ids, -1, -2) if name != "t" else ids.T
    elif name == "T":
        arr = ids.transpose()
    else:
        arr = ids
    rec.set(out, _c(arr))


def flip(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    ids = rec.ids(args[0])
    if ids is None:
        return
    dims = arg(args, kwargs, 1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims)
    rec.set(out, _c(np.flip(ids, [int(d) % ids.ndim for d in dims])))


def cat(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """cat along channels concatenates ids (YOLO routes, DenseNet); along other axes it unions."""
    tensors = list(arg(args, kwargs, 0, "tensors"))
    nd = out.dim()
    dim = int(arg(args, kwargs, 1, "dim", 0)) % nd
    tensors = [t for t in tensors if t.dim() == nd]  # torch.cat skips legacy empty 1-D tensors
    tracked = [rec.ids(t) for t in tensors]
    vary = {a for ids in tracked if ids is not None for a in varying(ids)}
    if dim not in vary:
        rec.set(out, unify(rec, name, tensors, nd))
        return
    if vary - {dim}:
        raise rec.error(name, f"its inputs carry channels on axes {sorted(vary)} besides the cat axis {dim}")
    parts = []
    for t, ids in zip(tensors, tracked):
        n = t.shape[dim]
        if ids is None:
            ids = rec.mint(
                n,
                f"untracked input of {name} in {rec.where()}",
                fixed=f"untracked tensor concatenated in {rec.where()}",
            )
        flat = ids.reshape(-1)
        parts.append(flat if flat.size == n else np.full(n, flat[0], dtype=np.int64))
    shape = [1] * nd
    shape[dim] = -1
    rec.set(out, np.concatenate(parts).reshape(shape))


def stack(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = list(arg(args, kwargs, 0, "tensors"))
    dim = int(arg(args, kwargs, 1, "dim", 0)) % out.dim()
    base = unify(rec, name, tensors, out.dim() - 1)
    if base is not None:
        rec.set(out, np.expand_dims(base, dim))


def split(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """chunk into equal pieces: equal kept counts; sizes written in the code: fixed channels."""
    x, ids = args[0], rec.ids(args[0])
    pieces = out_tensors(out)
    if ids is None or not pieces:
        return
    dim = int(arg(args, kwargs, 1 if name == "unbind" else 2, "dim", 0)) % x.dim()
    if dim not in varying(ids):
        for p in pieces:
            rec.set(p, ids if p.dim() == ids.ndim else np.take(ids, 0, axis=dim))
        return
    if name == "unbind":
        rec.fix(ids, f"'unbind' of the channel axis in {rec.where()}")
        for k, p in enumerate(pieces):
            rec.set(p, _c(np.take(ids, k, axis=dim)))
        return
    sizes = [p.shape[dim] for p in pieces]
    chunks = np.split(ids, np.cumsum(sizes)[:-1], axis=dim)
    chunk_like = name in ("chunk", "unsafe_chunk") or (
        name == "tensor_split" and isinstance(arg(args, kwargs, 1, "sections"), int)
    )
    if len(pieces) > 1 and chunk_like and len(set(sizes)) == 1:
        rec.constrain(chunks, f"the {len(pieces)} equal pieces of '{name}'")
    elif len(pieces) > 1:
        rec.fix(ids, f"'{name}' into fixed sizes {sizes} in {rec.where()} (chunk() lets pruning shrink the pieces)")
    for p, c in zip(pieces, chunks):
        rec.set(p, _c(c))


def pad(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """F.pad: zero channels added on the channel axis keep a fixed count (ResNet option A)."""
    x, ids = args[0], rec.ids(args[0])
    if ids is None:
        return
    widths = list(arg(args, kwargs, 1, "pad"))
    mode = arg(args, kwargs, 2, "mode", "constant")
    arr = ids
    for k in range(len(widths) // 2):
        ax = x.dim() - 1 - k
        lo, hi = int(widths[2 * k]), int(widths[2 * k + 1])
        if ax not in varying(ids) or (lo == 0 and hi == 0):
            continue
        if mode != "constant" or lo < 0 or hi < 0:
            raise rec.error(name, f"{mode} padding of {lo},{hi} on the channel axis")
        flat = arr.reshape(-1)
        what = f"zero channels added by F.pad in {rec.where()} (their count is fixed in the code)"
        parts = [
            rec.mint(lo, f"pad in {rec.where()}", fixed=what),
            flat,
            rec.mint(hi, f"pad in {rec.where()}", fixed=what),
        ]
        shape = [1] * x.dim()
        shape[ax] = -1
        arr = np.concatenate(parts).reshape(shape)
    rec.set(out, arr)


def pixel_shuffle(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, ids = args[0], rec.ids(args[0])
    if ids is None:
        return
    r2 = int(arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor")) ** 2
    ax = x.dim() - 3
    if [a for a in varying(ids) if a != ax]:
        raise rec.error(name, "its input carries channels on a spatial axis")
    flat = ids.reshape(-1) if ids.size > 1 else np.full(x.shape[ax], ids.reshape(-1)[0])
    if name == "pixel_shuffle":  # output channel c reads input channels c*r^2 .. c*r^2 + r^2 - 1
        blocks = flat.reshape(-1, r2)
        rec.union(blocks, blocks[:, :1])
        new = blocks[:, 0]
    else:
        new = np.repeat(flat, r2)
    shape = [1] * out.dim()
    shape[ax] = -1
    rec.set(out, new.reshape(shape))


def channel_shuffle(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """torch.channel_shuffle: view (g, C/g), transpose, flatten, as ShuffleNet spells it out."""
    x, ids = args[0], rec.ids(args[0])
    if ids is None:
        return
    g = int(arg(args, kwargs, 1, "groups"))
    a = tuple(x.shape)
    split_shape = a[:1] + (g, a[1] // g) + a[2:]
    arr = reshape_ids(rec, ids, a, split_shape)
    arr = np.swapaxes(arr, 1, 2)
    rec.set(out, reshape_ids(rec, arr, a[:1] + (a[1] // g, g) + a[2:], a))


def copy_into(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``dst.copy_(src)``: the destination now holds the source's channels."""
    dst, src = args[0], args[1]
    src_ids = rec.ids(src)
    if rec.ids(dst) is None and src_ids is not None and src.dim() <= dst.dim():
        rec.set(dst, align(src_ids, dst.dim()))
        return
    pointwise(rec, name, args, kwargs, out)


def ignore(rec, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Outputs shaped by explicit sizes (``new_zeros``) or index lists carry no channels."""


HANDLERS = {
    **ELEMENTWISE,
    **{
        n: reshape
        for n in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")
    },
    **{n: expand for n in ("expand", "expand_as", "broadcast_to")},
    "repeat": repeat,
    "tile": repeat,
    **{
        n: permute
        for n in (
            "permute",
            "transpose",
            "swapaxes",
            "swapdims",
            "movedim",
            "moveaxis",
            "t",
            "T",
            "mT",
            "mH",
            "adjoint",
        )
    },
    "flip": flip,
    "cat": cat,
    "concat": cat,
    "concatenate": cat,
    "stack": stack,
    **{
        n: split
        for n in ("chunk", "split", "split_with_sizes", "tensor_split", "unbind", "unsafe_chunk", "unsafe_split")
    },
    **INDEXING,
    "pad": pad,
    "constant_pad_nd": pad,
    "pixel_shuffle": pixel_shuffle,
    "pixel_unshuffle": pixel_shuffle,
    "channel_shuffle": channel_shuffle,
    "native_channel_shuffle": channel_shuffle,
    **{
        n: ignore
        for n in ("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "nonzero", "argwhere", "bincount")
    },
    "copy": copy_into,
}

"""One weight row per slot position: what criteria score (``ChannelGroup.rows``).

``out``: each output filter flattened; ``in``: each input channel's slice across all outputs;
``through``: the per-channel weight (BN gamma as ``[n, 1]``, a depthwise filter as ``[n, k*k]``).
Rows are detached and read-only: a view of the weight when the slot spans a whole filter bank,
otherwise a gathered copy.
"""

from __future__ import annotations

import torch
from torch import nn

from detprune.graph.records import ModRecord


def _grouped(w: torch.Tensor, groups: int, pos: torch.Tensor, axis_len: int, first_is_pos: bool) -> torch.Tensor:
    """Rows of a grouped weight: position ``p`` lives in group ``p // (axis_len/groups)``."""
    per = axis_len // groups
    j, local = pos // per, pos % per
    if first_is_pos:  # w: [groups*per, other, ...] -> [groups, per, other, ...]
        wg = w.reshape(groups, per, *w.shape[1:])
        return wg[j, local].flatten(1)
    # w: [groups*other, per, ...] -> [groups, other, per, ...]
    wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    return wg[j, :, local].flatten(1)


def slot_rows(model: nn.Module, slot, rec: ModRecord | None) -> torch.Tensor | None:
    module = model.get_submodule(slot.module)
    idx = slot.index
    if slot.param is not None:
        p = getattr(module, slot.param).detach()
        axis = next((k for k, s in enumerate(p.shape) if s > 1), 0)
        return p.movedim(axis, 0).reshape(p.shape[axis], -1)[idx]
    if rec is None:
        return None
    if rec.kind in ("norm", "prelu"):
        names = [n for n, _ in rec.params.get("through", [])]
        if "weight" not in names:
            return None
        return module.weight.detach()[idx].reshape(-1, 1)
    if rec.kind == "dwconv":
        w = getattr(module, rec.params["through"][0][0]).detach()
        return w.reshape(-1, *w.shape[2:])[idx].flatten(1) if rec.transposed else w[idx].flatten(1)
    wname = rec.params["out"][0][0]
    w = getattr(module, wname).detach()
    if (
        slot.role == "out"
        and not rec.transposed
        and len(idx) == w.shape[0]
        and bool((idx == torch.arange(len(idx))).all())
    ):
        return w.flatten(1)  # the whole filter bank: a read-only view, no copy of a large layer
    if rec.kind == "linear":
        return w[idx] if slot.role == "out" else w[:, idx].t()
    g = rec.groups
    if not rec.transposed:  # [out, in/g, k..]
        if slot.role == "out":
            return w[idx].flatten(1)
        if g == 1:
            return w[:, idx].transpose(0, 1).flatten(1)
        return _grouped(w, g, idx, len(rec.inp), first_is_pos=False)
    # transposed: [in, out/g, k..]
    if slot.role == "in":
        return w[idx].flatten(1)
    if g == 1:
        return w[:, idx].transpose(0, 1).flatten(1)
    return _grouped(w, g, idx, len(rec.out), first_is_pos=False)

"""Physical pruning: slice every module's tensors to the channels a plan keeps.

Works on a deep copy unless ``inplace``; module names stay the same. A module whose channel axes
all survive is not touched at all, so the keep-everything plan reproduces the model bit for bit.
Grouped convolutions keep their group count (each group keeps the same number of channels, which
the graph's constraints guarantee); depthwise convolutions shrink their group count with their
channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from detprune.errors import GraphError
from detprune.graph.check import check_or_explain
from detprune.graph.clone import clone
from detprune.graph.records import ModRecord

Changes = tuple[dict[str, torch.Tensor], dict[str, Any]]  # new tensors by name, new attributes


def _idx(mask: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(mask)).to(device)


def _get(module: nn.Module, name: str) -> torch.Tensor:
    return getattr(module, name).detach()


def _rows_cols(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``w[rows][:, cols]`` in one gather (half the memory traffic of two)."""
    return w[rows[:, None], cols[None, :]]


def _grouped_gather(
    w: torch.Tensor, rows: torch.Tensor, mask2d: np.ndarray, rows_per_group: int, rec: ModRecord
) -> torch.Tensor:
    """Keep, for each kept row of group j, the columns (axis 1) group j keeps."""
    counts = mask2d.sum(axis=1)
    if len(set(counts.tolist())) != 1:
        raise GraphError(f"module '{rec.name}': grouped conv groups keep unequal channel counts {counts.tolist()}")
    local = torch.from_numpy(np.stack([np.flatnonzero(r) for r in mask2d])).to(w.device)  # [g, k]
    sel = w[rows]
    lj = local[rows // rows_per_group]  # [n, k]
    lj = lj.view(*lj.shape, *([1] * (w.dim() - 2))).expand(-1, -1, *w.shape[2:])
    return torch.gather(sel, 1, lj)


def _conv(m: nn.Module, rec: ModRecord, out_m: np.ndarray, in_m: np.ndarray) -> Changes:
    wname = rec.params["out"][0][0]
    bname = rec.params["out"][1][0] if len(rec.params["out"]) > 1 else None
    w = _get(m, wname)
    g = rec.groups
    out_i, in_i = _idx(out_m, w.device), _idx(in_m, w.device)
    if not out_i.numel() or not in_i.numel():
        raise GraphError(f"module '{rec.name}' would keep no channels")
    if not rec.transposed:  # [out, in/g, k..]
        w = (
            _rows_cols(w, out_i, in_i)
            if g == 1
            else _grouped_gather(w, out_i, in_m.reshape(g, -1), len(out_m) // g, rec)
        )
    else:  # [in, out/g, k..]
        w = (
            _rows_cols(w, in_i, out_i)
            if g == 1
            else _grouped_gather(w, in_i, out_m.reshape(g, -1), len(in_m) // g, rec)
        )
    tensors = {wname: w}
    if bname:
        tensors[bname] = _get(m, bname)[out_i]
    attrs = {"in_channels": int(in_m.sum()), "out_channels": int(out_m.sum())} if hasattr(m, "in_channels") else {}
    return tensors, attrs


def _dwconv(m: nn.Module, rec: ModRecord, th_m: np.ndarray) -> Changes:
    wname = rec.params["through"][0][0]
    bname = rec.params["through"][1][0] if len(rec.params["through"]) > 1 else None
    w = _get(m, wname)
    out_i = _idx(th_m, w.device)
    in_m = th_m.reshape(-1, rec.mult)[:, 0]
    tensors = {wname: w[_idx(in_m, w.device)] if rec.transposed else w[out_i]}  # [in, mult, k..] / [out, 1, k..]
    if bname:
        tensors[bname] = _get(m, bname)[out_i]
    n_in = int(in_m.sum())
    attrs = {"in_channels": n_in, "out_channels": int(th_m.sum()), "groups": n_in} if hasattr(m, "groups") else {}
    return tensors, attrs


def _linear(m: nn.Module, rec: ModRecord, out_m: np.ndarray, in_m: np.ndarray) -> Changes:
    wname = rec.params["out"][0][0]
    bname = rec.params["out"][1][0] if len(rec.params["out"]) > 1 else None
    w = _get(m, wname)
    out_i, in_i = _idx(out_m, w.device), _idx(in_m, w.device)
    tensors = {wname: _rows_cols(w, out_i, in_i)}
    if bname:
        tensors[bname] = _get(m, bname)[out_i]
    attrs = {"in_features": int(in_m.sum()), "out_features": int(out_m.sum())} if hasattr(m, "in_features") else {}
    return tensors, attrs


def _norm(m: nn.Module, rec: ModRecord, th_m: np.ndarray) -> Changes:
    n_old, n = len(th_m), int(th_m.sum())
    tensors = {}
    for pname, axis in rec.params.get("through", []):
        t = _get(m, pname)
        tensors[pname] = t.index_select(axis, _idx(th_m, t.device))
    attrs: dict[str, Any] = {}
    if isinstance(m, nn.modules.batchnorm._NormBase):
        attrs["num_features"] = n
    elif isinstance(m, nn.GroupNorm):
        attrs["num_channels"] = n
        if rec.norm_groups == n_old:
            attrs["num_groups"] = n
    elif isinstance(m, nn.LayerNorm):
        attrs["normalized_shape"] = (n,)
    elif isinstance(m, nn.PReLU):
        attrs["num_parameters"] = n
    return tensors, attrs


def _full(mask: np.ndarray | None) -> bool:
    return mask is None or bool(mask.all())


def module_changes(model: nn.Module, rec: ModRecord, keep: np.ndarray) -> Changes | None:
    """New tensors and attributes of one module under the kept-id mask (None: untouched)."""
    out_m = keep[rec.out] if rec.out is not None else None
    in_m = keep[rec.inp] if rec.inp is not None else None
    th_m = keep[rec.through] if rec.through is not None else None
    if _full(out_m) and _full(in_m) and _full(th_m):
        return None
    m = model.get_submodule(rec.name)
    if rec.kind == "conv":
        return _conv(m, rec, out_m, in_m)
    if rec.kind == "linear":
        if in_m is None:
            in_m = np.ones(_get(m, rec.params["in"][0][0]).shape[1], bool)
        return _linear(m, rec, out_m, in_m)
    if rec.kind == "dwconv":
        return _dwconv(m, rec, th_m)
    return _norm(m, rec, th_m)


def _install(module: nn.Module, tensors: dict[str, torch.Tensor], attrs: dict[str, Any]) -> None:
    for name, value in tensors.items():
        value = value.contiguous()
        if name in module._parameters:
            old = module._parameters[name]
            module._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
        else:
            module._buffers[name] = value
    for k, v in attrs.items():
        setattr(module, k, v)


def apply(graph, model: nn.Module, plan, inplace: bool = False, check: bool = True) -> nn.Module:
    """Prune ``model`` by ``plan``; with ``check``, run the example inputs through the result.

    Without ``inplace``, the sliced tensors are computed from ``model`` first and handed to
    a deep copy (``clone``) through its memo, so the copy never duplicates the tensors it replaces.
    """
    keep = graph.kept_mask(plan)  # validates the plan
    changes: dict[str, Changes] = {}
    with torch.no_grad():
        for rec in sorted(graph.records.values(), key=lambda r: r.order):
            ch = module_changes(model, rec, keep)
            if ch is not None:
                changes[rec.name] = ch
        for p in graph.param_slots:
            mask = keep[p.ids]
            if mask.all():
                continue
            tensors, _ = changes.setdefault(p.module, ({}, {}))
            t = tensors.get(p.param, _get(model.get_submodule(p.module), p.param))
            tensors[p.param] = t.index_select(p.axis, _idx(mask, t.device))
    if inplace:
        new = model
        for name, (tensors, attrs) in changes.items():
            _install(model.get_submodule(name), tensors, attrs)
    else:
        memo: dict[int, Any] = {}
        for name, (tensors, _) in changes.items():
            m = model.get_submodule(name)
            for pname, value in tensors.items():
                old = getattr(m, pname)
                value = value.contiguous()
                memo[id(old)] = (
                    nn.Parameter(value, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else value
                )
        new = clone(model, memo)
        for name, (_, attrs) in changes.items():
            _install(new.get_submodule(name), {}, attrs)
    if check and plan.kept:
        check_or_explain(graph, model if not inplace else None, new, plan, apply)
    return new

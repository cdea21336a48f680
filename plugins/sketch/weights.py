"""The weight arithmetic of the ``sketch`` compensator (research/algorithms.md sections 6.4-6.5).

Every touched module's pruned weight is recomputed from the *dense* weight, one axis at a time:

* input axis: plain selection of the kept input positions, except on the slots of a rebased
  group, where ``W' = W x_in Q^+`` (the consumer mixes all ``c`` original input channels of the
  group into the ``c'`` new ones; exact in the linear limit, where ``W Q^+ Q y = W P y``);
* output axis: plain selection, except on a rebased group's producer slot, where the new filters
  are ``Q A`` (``= B``, the sketch) with ``A`` the input-transformed filters, BN-folded in
  ``bn="fold"`` mode.

All arithmetic is float64 and cast back at the end, so positions that are only selected keep
their exact original values (float32 -> float64 -> float32 is lossless).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detprune_plugins.sketch.layout import GroupLayout, KeptIndex, positions


@dataclass
class Rebase:
    """A rebased group: new channels ``y' = Q y`` over the mixed channels ``layout.mix``."""

    layout: GroupLayout
    Q: torch.Tensor  # [len(kept), len(mix)] float64
    Qp: torch.Tensor  # pinv(Q): [len(mix), len(kept)]
    gram_error: float = 0.0

    @property
    def gid(self) -> int:
        return self.layout.group.id


def axes(rec) -> tuple[str, str | None, int, int]:
    """``(weight name, bias name, out dim, in dim)`` of a conv/linear record."""
    wname = rec.params["out"][0][0]
    bname = rec.params["out"][1][0] if len(rec.params["out"]) > 1 else None
    if rec.kind == "conv" and rec.transposed:
        return wname, bname, 1, 0
    return wname, bname, 0, 1


def input_side(
    original: nn.Module,
    graph,
    kept: KeptIndex,
    name: str,
    rebases: dict[int, Rebase],
    touched: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """``name``'s dense weight (float64) with its input axis pruned: selected, or mixed by ``Q^+``
    on the slots of the groups in ``rebases``. The output axis is left whole. The pruned input
    positions that were mixed are appended to ``touched``."""
    rec = graph.records[name]
    wname, _, _, in_dim = axes(rec)
    w = getattr(original.get_submodule(name), wname).detach().to(torch.float64)
    if rec.inp is None:
        return w
    view = w.movedim(in_dim, 0)
    keep = kept(name, "in", w.device)
    new = view[keep].clone()
    for rb in rebases.values():
        for slot in rb.layout.slots("in"):
            if slot.module != name:
                continue
            src = positions(slot, rb.layout.mix).to(w.device)  # [R, m]
            dst = torch.searchsorted(keep, positions(slot, rb.layout.kept).to(w.device))  # [R, l]
            mixed = torch.einsum("ck,rc...->rk...", rb.Qp.to(w.device), view[src])
            new[dst.flatten()] = mixed.flatten(0, 1)
            if touched is not None:
                touched.append(dst.flatten())
    return new.movedim(0, in_dim)


def fold_factors(
    original: nn.Module, layout: GroupLayout, producer: str, bn_mode: str, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per mixed channel (in ``layout.mix`` order): the BN scale ``gamma/sqrt(var+eps)`` that folds
    into the producer's filters, and the folded shift ``beta + scale*(bias - mean)``.

    Without a BN after the producer (or outside ``fold`` mode) the scale is 1 and the shift is
    the conv's own bias (``None`` without one).
    """
    slot = next(s for s in layout.slots("out") if s.module == producer)
    pos = positions(slot, layout.mix)[0].to(device)
    conv = original.get_submodule(producer)
    bias = getattr(conv, "bias", None)
    b = bias.detach().to(torch.float64)[pos] if bias is not None else None
    norm = layout.norm_of.get(producer)
    if bn_mode != "fold" or norm is None:
        return torch.ones(pos.numel(), dtype=torch.float64, device=device), b
    bn = original.get_submodule(norm)
    var = bn.running_var.detach().to(torch.float64)[pos]
    mean = bn.running_mean.detach().to(torch.float64)[pos]
    scale = 1.0 / (var + bn.eps).sqrt()
    if bn.affine:
        scale = scale * bn.weight.detach().to(torch.float64)[pos]
    shift = -scale * mean + (bn.bias.detach().to(torch.float64)[pos] if bn.affine else 0.0)
    if b is not None:
        shift = shift + scale * b
    return scale, shift


def producer_rows(w_in: torch.Tensor, graph, layout: GroupLayout, producer: str, scale: torch.Tensor) -> torch.Tensor:
    """The producer's (input-transformed, folded) filters of the mixed channels: ``[m, rest...]``."""
    _, _, out_dim, _ = axes(graph.records[producer])
    slot = next(s for s in layout.slots("out") if s.module == producer)
    pos = positions(slot, layout.mix)[0].to(w_in.device)
    rows = w_in.movedim(out_dim, 0)[pos]
    return rows * scale.reshape(-1, *([1] * (rows.dim() - 1)))


def write_module(
    original: nn.Module, pruned: nn.Module, graph, kept: KeptIndex, name: str, rebases: dict[int, Rebase], bn_mode: str
) -> None:
    """Rewrite the positions of ``name``'s pruned weight (and bias) that a rebase changes, from
    the dense weight. Every other position keeps what the pruned model holds, so the edits of a
    compensator that ran before (``fold-beta``, ThiNet scaling) survive outside rebased groups."""
    rec = graph.records[name]
    wname, bname, out_dim, _ = axes(rec)
    target = pruned.get_submodule(name)
    mixed_in: list[torch.Tensor] = []
    w_in = input_side(original, graph, kept, name, rebases, mixed_in)
    view = w_in.movedim(out_dim, 0)
    keep = kept(name, "out", view.device) if rec.out is not None else torch.arange(view.shape[0], device=view.device)
    new = view[keep].clone()
    weight = getattr(target, wname)
    current = weight.detach().to(torch.float64).movedim(out_dim, 0)
    if new.shape != current.shape:
        raise RuntimeError(
            f"sketch: recomputed weight of '{name}' has shape {tuple(new.shape)}, "
            f"the pruned model has {tuple(current.shape)}"
        )
    mask = torch.zeros(new.shape[:2], dtype=torch.bool, device=new.device)  # [out, in] after movedim
    for dst in mixed_in:
        mask[:, dst] = True
    bias = getattr(target, bname) if bname else None
    new_b = bias.detach().to(torch.float64).clone() if bias is not None else None
    for rb in rebases.values():
        slot = next((s for s in rb.layout.slots("out") if s.module == name), None)
        if slot is None:
            continue
        scale, shift = fold_factors(original, rb.layout, name, bn_mode, view.device)
        rows = producer_rows(w_in, graph, rb.layout, name, scale)
        dst = torch.searchsorted(keep, positions(slot, rb.layout.kept)[0].to(view.device))
        Q = rb.Q.to(view.device)
        new[dst] = (Q @ rows.flatten(1)).reshape(len(dst), *rows.shape[1:])
        mask[dst] = True
        if new_b is not None:
            folded = bn_mode == "fold" and name in rb.layout.norm_of
            new_b[dst] = 0.0 if folded else Q @ shift
    mask = mask.reshape(*mask.shape, *([1] * (new.dim() - mask.dim())))
    merged = torch.where(mask, new, current).movedim(0, out_dim)
    with torch.no_grad():
        weight.copy_(merged.to(weight.dtype))
        if new_b is not None:
            bias.copy_(new_b.to(bias.dtype))

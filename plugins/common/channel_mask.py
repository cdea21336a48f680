"""Zero a plan's removed channels in place, so the masked model computes what the pruned one does.

Soft filter pruning (He et al., IJCAI 2018, §3.2; MFP builds on it) zeroes the selected filters and
keeps them trainable. SFP zeroes conv weights only, so a masked channel still outputs act(β) and
"zeroed" differs from "removed" (SFP issue #36, FPGM #27; ../shared/research/algorithms.md §2.6).
Here every tensor that surgery (``graph.apply``) would slice on a removed channel's output side is
zeroed: producer filters and biases, per-channel "through" modules (BN/GN/LN γ and β and BN's
running mean, depthwise filters and biases) and bare per-channel parameters (layer scales). A
removed channel then carries exactly 0, and consumers' input slices see nothing: masked ==
physically pruned (for norms whose statistics are per channel: BN; GroupNorm over several
channels and LayerNorm mix the zeroed channel into the others' statistics). Consumers' input
slices are not touched, so the channel can regrow while training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

#: buffers left alone: a zero channel normalises to 0 whatever its variance.
_KEEP = frozenset({"running_var", "num_batches_tracked"})


def _along(drop: torch.Tensor, axis: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = drop.numel()
    return drop.view(shape)


@dataclass
class ChannelMask:
    """Pairs ``(tensor, bool mask broadcastable to it)``: the entries a plan's removed channels own."""

    entries: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def zero_(self) -> None:
        """Set every masked entry to 0 (in place, no autograd record)."""
        with torch.no_grad():
            for t, m in self.entries:
                t.masked_fill_(m, 0)

    def holds(self) -> bool:
        """True when every masked entry is still exactly 0 (no training since the mask was applied)."""
        with torch.no_grad():
            return all(not bool(t.masked_select(m).any()) for t, m in self.entries)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Zero the entries for the duration of the block, then restore them bit for bit."""
        with torch.no_grad():
            saved = [t.masked_select(m) for t, m in self.entries]
            self.zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                for (t, m), v in zip(self.entries, saved):
                    t.masked_scatter_(m.expand_as(t), v)

    def numel(self) -> int:
        """How many tensor entries the mask zeroes."""
        return sum(int(m.expand_as(t).sum()) for t, m in self.entries)


def channel_mask(model: nn.Module, graph, plan, through: bool = True) -> ChannelMask:
    """The entries of ``model`` (traced as ``graph``) that ``plan``'s removed channels own.

    ``through=False`` keeps per-channel modules (BN, depthwise convs, layer scales) and zeroes
    producers only: SFP's original mask, under which a channel still outputs act(β).
    """
    keep = graph.kept_mask(plan)  # validates the plan
    mask = ChannelMask()

    def add(module: nn.Module, name: str, drop: torch.Tensor, axis: int = 0) -> None:
        t = getattr(module, name, None)
        if not torch.is_tensor(t) or not t.is_floating_point() or name in _KEEP:
            return
        d = drop.to(t.device)
        mask.entries.append((t, _along(d, axis, t.dim()) if d.dim() == 1 else d))

    for rec in graph.records.values():
        ids = rec.out if rec.kind in ("conv", "linear") else rec.through
        if ids is None or rec.kind == "prelu" or (not through and rec.kind not in ("conv", "linear")):
            continue  # prelu(0) == 0: its slope may stay for regrowth
        dropped = ~keep[ids]
        if not dropped.any():
            continue
        m = model.get_submodule(rec.name)
        drop = torch.from_numpy(np.ascontiguousarray(dropped))
        role = "out" if rec.kind in ("conv", "linear") else "through"
        (wname, _), *rest = rec.params[role]
        w = getattr(m, wname)
        if rec.kind == "conv" and rec.transposed:  # [in, out/g, k..]: out position = group * out/g + l
            g, n_in = rec.groups, w.shape[0]
            d2 = drop.view(g, 1, -1).expand(g, n_in // g, w.shape[1]).reshape(n_in, w.shape[1])
            add(m, wname, d2.reshape(*d2.shape, *([1] * (w.dim() - 2))))
        elif rec.kind == "dwconv" and rec.transposed:  # [in, mult, k..]: position = i * mult + j
            add(m, wname, drop.view(w.shape[0], rec.mult, *([1] * (w.dim() - 2))))
        else:
            add(m, wname, drop)
        for pname, axis in rest:
            add(m, pname, drop, axis)
    for p in graph.param_slots if through else ():
        dropped = ~keep[p.ids]
        if dropped.any():
            add(model.get_submodule(p.module), p.param, torch.from_numpy(np.ascontiguousarray(dropped)), p.axis)
    return mask

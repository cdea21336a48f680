"""Where Network Slimming's scale factors live in a ChannelGraph: the prunable BatchNorm positions.

Network Slimming (Liu et al., ICCV 2017, §3.2) puts its L1 penalty on "the scaling factors of the
BN layers" and prunes by them. In a real network not every BN may lose channels: a BN whose
group reaches a model output or a protected head, or the positions of channels the engine
fixes (the zero channels ResNet option A's ``F.pad`` adds), can never go, so they are neither
penalised nor counted for the global threshold. A :class:`BNSite` is one BatchNorm's free
positions inside one prunable group, paired with the conv that produces its input (the layer a
user recognises, and the producer whose own width ``--shortcut sketch`` records).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_TYPES: tuple[type, ...] = (_BatchNorm,)  # BatchNorm1d/2d/3d, SyncBatchNorm, LazyBatchNorm


@dataclass(frozen=True, eq=False)
class BNSite:
    """One BatchNorm's prunable positions in one group.

    ``positions``: indices on the BN's channel axis (fixed channels left out); ``channels``: the
    group channel each carries; ``producer``: the module whose output this BN normalises (its
    own name when no producer feeds it directly).
    """

    module: str
    group: int
    positions: torch.Tensor
    channels: torch.Tensor
    producer: str


def _same_ids(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))


def producer_of(graph, norm: str) -> str | None:
    """The conv/linear whose output ``norm`` normalises directly (identical channel ids), if any.

    A producer mints fresh ids and a BN passes them through unchanged, so a BN right after a conv
    carries exactly that conv's output ids; after a residual add it carries one operand's ids.
    """
    rec = graph.records.get(norm)
    if rec is None or rec.through is None:
        return None
    for other in graph.records.values():
        if other.out is not None and other.kind != "norm" and _same_ids(other.out, rec.through):
            return other.name
    return None


def norm_after(graph, module: str) -> str | None:
    """The BN/GN that normalises ``module``'s output directly (the inverse of :func:`producer_of`)."""
    rec = graph.records.get(module)
    if rec is None or rec.out is None:
        return None
    for other in graph.records.values():
        if other.kind == "norm" and _same_ids(other.through, rec.out):
            return other.name
    return None


def bn_sites(graph, model: nn.Module) -> list[BNSite]:
    """Every affine BatchNorm position of every prunable group that is free to go, in graph order."""
    sites: list[BNSite] = []
    producers: dict[str, str] = {}
    for group in graph.prunable_groups():
        fixed = group.fixed
        for slot in group.throughs:
            if slot.param is not None:
                continue
            bn = model.get_submodule(slot.module)
            if not isinstance(bn, BN_TYPES) or getattr(bn, "weight", None) is None:
                continue
            free = ~fixed[slot.channel]
            if not bool(free.any()):
                continue
            if slot.module not in producers:
                producers[slot.module] = producer_of(graph, slot.module) or slot.module
            sites.append(BNSite(slot.module, group.id, slot.index[free], slot.channel[free], producers[slot.module]))
    return sites


def site_gammas(model: nn.Module, sites: list[BNSite]) -> list[torch.Tensor]:
    """|γ| of each site's positions (float32, CPU, detached), one tensor per site."""
    out = []
    for s in sites:
        w = model.get_submodule(s.module).weight.detach()
        out.append(w[s.positions.to(w.device)].abs().float().cpu())
    return out


def penalty_targets(sites: list[BNSite], model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
    """Per BN weight, the positions the sparsity term touches: ``None`` = all of them."""
    masks: dict[str, torch.Tensor] = {}
    for s in sites:
        w = model.get_submodule(s.module).weight
        m = masks.setdefault(s.module, torch.zeros(w.shape[0], dtype=torch.bool))
        m[s.positions] = True
    out = []
    for name, m in masks.items():
        w = model.get_submodule(name).weight
        out.append((w, None if bool(m.all()) else m.to(device=w.device, dtype=w.dtype)))
    return out

"""Where a channel group's channels sit in each module, which of them the sketch may mix, and
why a group cannot be rebased (the bookkeeping half of the ``sketch`` compensator).

Mixing channels (new channel = a combination of old ones, research/algorithms.md section 6.4) is
only meaningful where every module that touches the group treats channels *linearly and alike*:
convolutions and linears on either side, BatchNorm that can be folded into its producer. A
depthwise conv, GroupNorm, PReLU or per-channel parameter applies a different function to each
channel, and a grouped conv only sees its own slice, so groups containing them keep plain
selection (the report says which module stopped them).

The mixed set ``mix`` is the group channels that are free (not fixed by the graph) and carried
by every slot: in a ResNet with option-A shortcuts one group spans three stages, the zero-padded
channels are fixed, and only the first stage's channels, present everywhere, are mixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

SUPPORTED_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class GroupLayout:
    """One group as the sketch sees it. ``kept[j]`` is the group channel whose place new channel
    ``j`` takes; ``norm_of`` maps each producer to the BatchNorm that normalises its output."""

    group: object  # detprune.graph.ChannelGroup
    mix: torch.Tensor
    kept: torch.Tensor
    norm_of: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    def slots(self, role: str):
        return [s for s in self.group.slots if s.role == role]


class KeptIndex:
    """``graph.kept_index(plan, module, role)`` for many modules, with the plan validated once."""

    def __init__(self, graph, plan) -> None:
        self.graph, self.plan = graph, plan
        self.mask = graph.kept_mask(plan)
        self.memo: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, module: str, role: str, device=None) -> torch.Tensor:
        key = (module, role)
        if key not in self.memo:
            rec = self.graph.records.get(module)
            ids = None if rec is None else {"out": rec.out, "in": rec.inp, "through": rec.through}[role]
            self.memo[key] = (
                torch.from_numpy(np.flatnonzero(self.mask[ids]))
                if ids is not None
                else self.graph.kept_index(self.plan, module, role)
            )
        return self.memo[key].to(device) if device is not None else self.memo[key]


def positions(slot, channels: torch.Tensor) -> torch.Tensor | None:
    """Axis positions of ``channels`` (sorted group channels) in ``slot`` as ``[R, len(channels)]``.

    ``R`` is the number of times each channel appears (``H*W`` for a Linear after a flatten, else 1);
    row ``r`` holds every channel's ``r``-th position. ``None`` when the channels appear unevenly.
    """
    ch, idx = slot.channel, slot.index
    sel = torch.isin(ch, channels)
    ch_s, idx_s = ch[sel], idx[sel]
    if ch_s.numel() == 0 or channels.numel() == 0:
        return None
    counts = torch.bincount(ch_s, minlength=int(channels.max()) + 1)[channels]
    if int(counts.min()) != int(counts.max()) or int(counts.min()) == 0:
        return None
    order = torch.argsort(ch_s * (int(idx.max()) + 1) + idx_s)  # by channel, then by position
    return idx_s[order].reshape(channels.numel(), int(counts[0])).T.contiguous()


def pair_norms(graph) -> dict[str, str]:
    """``{producer: batchnorm}`` where the norm reads exactly the producer's output channels."""
    by_out = {}
    for name, rec in graph.records.items():
        if rec.out is not None and rec.kind in ("conv", "linear"):
            by_out.setdefault(np.asarray(rec.out).tobytes(), name)
    pairs = {}
    for name, rec in graph.records.items():
        if rec.kind == "norm" and rec.through is not None:
            prod = by_out.get(np.asarray(rec.through).tobytes())
            if prod is not None:
                pairs[prod] = name
    return pairs


def _module_problem(model: nn.Module, graph, slot, bn: str, paired: set[str]) -> str:
    rec = graph.records.get(slot.module)
    what = f"'{slot.module}'"
    if slot.param is not None:
        return f"per-channel parameter {slot.module}.{slot.param} cannot take mixed channels"
    if rec is None:
        return f"module {what} has no record in the graph"
    module = model.get_submodule(slot.module)
    if slot.role in ("out", "in"):
        if rec.kind not in ("conv", "linear"):
            return f"module {what} ({type(module).__name__}) is not a convolution or linear layer"
        if rec.groups != 1:
            return f"grouped convolution {what} (groups={rec.groups}) only sees its own slice of the channels"
        return ""
    if rec.kind != "norm" or not isinstance(module, SUPPORTED_NORMS):
        return f"per-channel module {what} ({type(module).__name__}) cannot take mixed channels"
    if not module.track_running_stats:
        return f"BatchNorm {what} keeps no running statistics to re-estimate"
    if bn != "reinit" and slot.module not in paired:
        return (
            f"BatchNorm {what} does not directly follow a producer of the group (it normalises a sum), "
            f"so it cannot be folded; use bn='reinit'"
        )
    if bn == "fold" and not module.affine:
        return f"BatchNorm {what} has no affine parameters to hold the folded scale and shift"
    return ""


def layout(graph, group, plan, model: nn.Module, bn: str, pairs: dict[str, str]) -> GroupLayout:
    """The mixed channels of ``group`` under ``plan``, or the reason it keeps plain selection."""
    kept_all = plan.kept.get(group.id, torch.arange(group.size))
    producers = [s.module for s in group.producers]
    norm_of = {p: pairs[p] for p in producers if p in pairs}
    paired = set(norm_of.values())
    out = GroupLayout(group, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), norm_of)
    present = torch.ones(group.size, dtype=torch.bool)
    for slot in group.slots:
        problem = _module_problem(model, graph, slot, bn, paired)
        if problem:
            out.reason = problem
            return out
        here = torch.zeros(group.size, dtype=torch.bool)
        here[slot.channel] = True
        present &= here
    mix = torch.nonzero(present & ~group.fixed).flatten()
    if mix.numel() < 2:
        out.reason = "fewer than two channels are free and carried by every module of the group"
        return out
    out.mix = mix
    out.kept = mix[torch.isin(mix, kept_all)]
    if out.kept.numel() == 0:
        out.reason = "the plan keeps none of the group's mixable channels"
        return out
    for slot in group.slots:
        if slot.role == "out" and (p := positions(slot, mix)) is not None and p.shape[0] != 1:
            out.reason = f"producer '{slot.module}' carries a channel more than once"
            return out
        if positions(slot, mix) is None:
            out.reason = f"module '{slot.module}' carries the group's channels an unequal number of times"
            return out
    return out

"""Compensator ``fold-beta``: fold the constant output act(β) of removed channels into their consumers.

A channel Network Slimming removes has γ ≈ 0, but its BN still outputs β, so the layer after
still sees the constant act(β) (liuzhuang13/slimming #5, network-slimming #53). Dropping it
changes the function; SlimYOLOv3-derived code folds it forward (research/algorithms.md §4.5):
``offset[o] = Σ_{c removed} Σ_k W_next[o, c, k]·act(β_c)``, then ``next_bn.running_mean -=
offset`` or ``next_conv.bias += offset``.

How we get act(β) for any activation and any path (a residual stream sums several producers'
constants; upsample and concat routes pass them on): a copy of the dense model with γ = 0 on the
removed channels is run once on the example inputs, and each consumer's input is read on those
channels. With γ = 0 the value is exactly constant over batch and space; a channel that is not
constant (a producer without BN feeds it) is left out and reported. The fold is exact for
consumers without padding effects (1×1 convs, linears); for k×k convs with zero padding the
border pixels see fewer taps, so it is approximate there (``kernels="1x1"`` restricts it).
Transposed convs (each output sums a position-dependent number of taps) are skipped.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Compensator
from detprune_plugins.slimming.sites import BN_TYPES, norm_after

log = logging.getLogger("detprune.slimming")


class FoldBeta(Compensator):
    """Fold act(β) of removed BN channels into the next layer's bias or BN mean (NS pitfall, §4.5)."""

    def __init__(self, kernels: str = "all", rtol: float = 1e-5):
        """
        :param kernels: ``all`` (fold into every conv/linear consumer) or ``1x1`` (only where exact).
        :param rtol: how constant a channel must be to count as act(β) (relative spread).
        """
        if kernels not in ("all", "1x1"):
            raise DetpruneError(f"fold-beta: kernels must be 'all' or '1x1', got {kernels!r}")
        self.kernels, self.rtol = kernels, rtol
        self.report: dict[str, Any] = {}

    def compensate(self, original: nn.Module, pruned: nn.Module, plan: PruningPlan, ctx: PruneContext) -> None:
        graph = ctx.require_graph(original)
        gone = {gid: ~torch.isin(torch.arange(graph.group(gid).size), kept) for gid, kept in plan.kept.items()}
        gone = {g: r for g, r in gone.items() if bool(r.any())}
        self.report = {"folded": {}, "skipped": {}, "no_bn": 0, "not_constant": 0}
        foldable: dict[int, torch.Tensor] = {}  # removed channels whose every producer has a BN: γ = 0 → act(β)
        for gid, rm in gone.items():
            backed = rm & _bn_backed(graph, graph.group(gid), original)
            self.report["no_bn"] += int((rm & ~backed).sum())
            if bool(backed.any()):
                foldable[gid] = backed
        if not foldable:
            return
        wanted: dict[str, list[torch.Tensor]] = {}  # consumer -> positions on its input axis to fold
        for gid, rm in foldable.items():
            for slot in graph.group(gid).consumers:
                pos = slot.index[rm[slot.channel]]
                if pos.numel():
                    wanted.setdefault(slot.module, []).append(pos)
        values = self._constants(original, graph, gone, wanted, ctx)
        offsets: dict[str, torch.Tensor] = {}
        for name, pos_list in wanted.items():
            pos = torch.cat(pos_list)
            mean, spread = values[name]
            const = spread[pos] <= self.rtol * (1.0 + mean[pos].abs())
            self.report["not_constant"] += int((~const).sum())
            pos, v = pos[const], mean[pos][const]
            why = self._why_skip(original.get_submodule(name))
            if why:
                self.report["skipped"][name] = why
                continue
            if pos.numel():
                offsets[name] = _offset(original.get_submodule(name), pos, v)
        for name, off in offsets.items():
            self._apply(graph, plan, pruned, name, off)
        log.info(
            "fold-beta: folded act(β) into %d consumer(s), skipped %d; %d removed channel(s) without BN, "
            "%d not constant",
            len(self.report["folded"]),
            len(self.report["skipped"]),
            self.report["no_bn"],
            self.report["not_constant"],
        )

    def _why_skip(self, module: nn.Module) -> str:
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            return "transposed conv: a constant input gives a position-dependent output"
        if (
            isinstance(module, nn.modules.conv._ConvNd)
            and self.kernels == "1x1"
            and any(k != 1 for k in module.kernel_size)
        ):
            return f"{'x'.join(map(str, module.kernel_size))} kernel (kernels='1x1')"
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            return f"{type(module).__name__} is not a conv or linear layer"
        return ""

    @torch.no_grad()
    def _constants(self, original, graph, removed, wanted, ctx) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per consumer input position: mean and spread (max − min) of its value with γ = 0 on removed channels."""
        probe = copy.deepcopy(original).eval()
        for gid, rm in removed.items():
            for slot in graph.group(gid).throughs:
                bn = probe.get_submodule(slot.module)
                if slot.param is None and isinstance(bn, BN_TYPES) and bn.weight is not None:
                    bn.weight[slot.index[rm[slot.channel]].to(bn.weight.device)] = 0.0
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(name, linear):
            def fn(module, args):
                x = args[0].detach().float()
                x = x.movedim(-1 if linear else 1, 0).reshape(x.shape[-1 if linear else 1], -1)
                stats[name] = (x.mean(1).cpu(), (x.amax(1) - x.amin(1)).cpu())

            return fn

        handles = [
            probe.get_submodule(n).register_forward_pre_hook(hook(n, isinstance(probe.get_submodule(n), nn.Linear)))
            for n in wanted
        ]
        inputs = ctx.example_inputs or graph.example_inputs
        device = next((p.device for p in probe.parameters()), torch.device("cpu"))
        try:
            probe(*[x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs])
        finally:
            for h in handles:
                h.remove()
        return stats

    @torch.no_grad()
    def _apply(self, graph, plan, pruned: nn.Module, name: str, offset: torch.Tensor) -> None:
        keep_out = graph.kept_index(plan, name, "out")
        off = offset[keep_out]
        module = pruned.get_submodule(name)
        if getattr(module, "bias", None) is not None:
            module.bias.add_(off.to(module.bias))
            self.report["folded"][name] = "bias"
            return
        bn_name = norm_after(graph, name)
        bn = pruned.get_submodule(bn_name) if bn_name else None
        if isinstance(bn, BN_TYPES) and bn.running_mean is not None:
            bn.running_mean.sub_(off.to(bn.running_mean))
            self.report["folded"][name] = f"running_mean of {bn_name}"
            return
        self.report["skipped"][name] = "no bias and no BatchNorm right after it"


def _bn_backed(graph, group, model: nn.Module) -> torch.Tensor:
    """Group channels whose every producer is followed by an affine BN (so γ = 0 makes them constant)."""
    ok = torch.zeros(group.size, dtype=torch.bool)
    bad = torch.zeros(group.size, dtype=torch.bool)
    for slot in group.producers:
        bn_name = norm_after(graph, slot.module)
        bn = model.get_submodule(bn_name) if bn_name else None
        has_bn = isinstance(bn, BN_TYPES) and bn.weight is not None
        (ok if has_bn else bad)[slot.channel] = True
    return ok & ~bad


def _offset(module: nn.Module, pos: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ over removed input positions of weight·value, per (dense) output channel."""
    w = module.weight.detach().float().cpu()
    if isinstance(module, nn.Linear):
        return w[:, pos] @ v
    groups = module.groups
    if groups == 1:
        return w[:, pos].flatten(2).sum(2) @ v
    per_in = module.in_channels // groups
    per_out = module.out_channels // groups
    out = torch.zeros(w.shape[0])
    for p, val in zip(pos.tolist(), v.tolist()):  # input channel p feeds only its conv group's outputs
        j, local = divmod(p, per_in)
        rows = slice(j * per_out, (j + 1) * per_out)
        out[rows] += w[rows, local].flatten(1).sum(1) * val
    return out


@detprune.hookimpl
def detprune_compensators():
    return {"fold-beta": FoldBeta}

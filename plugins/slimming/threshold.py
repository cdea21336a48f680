"""Network Slimming's global |γ| threshold, and how each coupled channel group answers it.

Liu et al. (ICCV 2017, §3.3, "Channel pruning and fine-tuning"): after sparsity training, one
global threshold over the |γ| of every prunable BN channel, at the percentile of the target
ratio; channels under it go. The reference code takes ``t = sorted[int(N·p)]`` and keeps
``|γ| > t``, which removes one channel more than asked; here ``t`` is the k-th smallest |γ| with
k = round(N·ratio), so exactly k go when there are no ties.

A residual stream couples several producers (each with its own BN), so a group channel has
several γ. ``--shortcut`` says how they combine (research/algorithms.md §4.4, §6.5):

* ``shared``: the group's score per channel, Σ|γ| over its BNs (the ``bn-scale`` criterion),
  divided by the number of BNs carrying it so that it stays comparable with ``t``;
* ``union``: SlimYOLOv3's ``Merge_masks``: a channel stays if *any* producer's BN keeps it
  (max |γ| > t), so the OR-merge keeps more than asked;
* ``sketch``: each producer keeps its own count c_i' = #(|γ_i| > t) (recorded in
  ``plan.widths``); the group keeps c* = min (or mean) of them, the top c* by Σ|γ|, and the
  sketch compensator reconciles the wider producers (the Global-Information paper's c1' ≠ c2').

Every layer keeps at least ``ceil(min_keep·C)`` channels (its top |γ|; SlimYOLOv3
``--perlayer_ratio``), which avoids the whole-layer collapse reported in network-slimming #14/#62;
the layers that hit this floor are listed. Widths are rounded up to ``round_to`` by the engine's
planner, which also keeps fixed channels and count constraints. The achieved ratio is reported
over the same BN positions the threshold was taken over.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan
from detprune_plugins.slimming.sites import BNSite, site_gammas

MODES = ("shared", "union", "sketch")
WIDTHS = ("min", "mean")


def global_threshold(values: torch.Tensor, ratio: float) -> float | None:
    """The k-th smallest value, k = round(N·ratio): channels with |γ| ≤ t go. None when none go."""
    n = int(values.numel())
    k = min(int(math.floor(n * ratio + 0.5)), n)
    if k <= 0:
        return None
    return float(torch.kthvalue(values.float().cpu(), k).values)


def floor_count(n: int, min_keep: float) -> int:
    """The per-layer floor: at least ``ceil(min_keep·n)`` channels and at least one."""
    return max(1, int(math.ceil(min_keep * n - 1e-9)))


def _group_scores(size: int, items: list[tuple[BNSite, torch.Tensor]]):
    summed = torch.zeros(size)
    count = torch.zeros(size)
    peak = torch.zeros(size)
    for site, gam in items:
        summed.index_add_(0, site.channels, gam)
        count.index_add_(0, site.channels, torch.ones(len(gam)))
        peak.scatter_reduce_(0, site.channels, gam, reduce="amax")
    return summed, count, peak


def make_plan(
    model,
    graph,
    sites: list[BNSite],
    ratio: float,
    mode: str = "shared",
    width: str = "min",
    min_keep: float = 0.1,
    round_to: int | None = None,
) -> PruningPlan:
    """One global threshold over all sites' |γ|, answered per group by ``mode`` (see module doc)."""
    if mode not in MODES:
        raise DetpruneError(f"slimming: shortcut must be one of {', '.join(MODES)}, got {mode!r}")
    if width not in WIDTHS:
        raise DetpruneError(f"slimming: shortcut_width must be one of {', '.join(WIDTHS)}, got {width!r}")
    if not 0.0 <= ratio < 1.0:
        raise DetpruneError(f"slimming: ratio is the fraction of channels removed and must be in [0, 1), got {ratio}")
    if not 0.0 <= min_keep <= 1.0:
        raise DetpruneError(
            f"slimming: min_keep is a fraction of each layer's channels and must be in [0, 1], got {min_keep}"
        )
    if not sites:
        raise DetpruneError(
            "slimming: no BatchNorm sits in a prunable channel group of this model; Network "
            "Slimming ranks channels by BN scale factors (use another pruner or criterion)"
        )
    gammas = site_gammas(model, sites)
    values = torch.cat(gammas)
    t = global_threshold(values, ratio)
    cut = -math.inf if t is None else t
    big = float(values.max()) + 1.0  # score of channels no BN carries: nothing to judge them by, they stay
    by_group: dict[int, list[tuple[BNSite, torch.Tensor]]] = {}
    for site, gam in zip(sites, gammas):
        by_group.setdefault(site.group, []).append((site, gam))

    kept: dict[int, torch.Tensor] = {}
    widths: dict[int, dict[str, int]] = {}
    floor_hits: list[str] = []
    for gid, items in by_group.items():
        group = graph.group(gid)
        free = ~group.fixed
        n_free = int(free.sum())
        summed, count, peak = _group_scores(group.size, items)
        score = {"shared": summed / count.clamp_min(1.0), "union": peak, "sketch": summed}[mode]
        score = torch.where(count > 0, score, torch.full_like(score, max(big, float(score.max())) + 1.0))
        floor = floor_count(n_free, min_keep)
        own: dict[str, int] = {}
        if mode == "sketch":
            for site, gam in items:
                c = int((gam > cut).sum())
                f = floor_count(len(gam), min_keep)
                if c < f:
                    floor_hits.append(site.producer)
                own[site.producer] = max(own.get(site.producer, 0), max(c, f))
            counts = list(own.values())
            n_keep = min(counts) if width == "min" else int(math.floor(sum(counts) / len(counts) + 0.5))
            n_keep = max(n_keep, floor)
        else:
            n_keep = int(((score > cut) & free).sum())
            if n_keep < floor:
                floor_hits.extend(group.modules("out"))
                n_keep = floor
        n_keep = min(n_keep, n_free)
        keep_total = n_keep + (group.size - n_free)
        if keep_total < group.size:
            sub = graph.plan({gid: score}, ratio=1.0 - keep_total / group.size, round_to=round_to)
            if gid in sub.kept:
                kept[gid] = sub.kept[gid]
        if mode == "sketch" and len(group.producers) > 1:
            widths[gid] = _producer_widths(group, own, kept.get(gid))

    removed = 0
    for site, _ in zip(sites, gammas):
        if site.group in kept:
            removed += int((~torch.isin(site.channels, kept[site.group])).sum())
    meta: dict[str, Any] = {
        "pruner": "slimming",
        "criterion": "bn-scale",
        "asked_ratio": float(ratio),
        "achieved_ratio": removed / values.numel(),
        "threshold": t,
        "channels": int(values.numel()),
        "channels_removed": removed,
        "floor_hits": list(dict.fromkeys(floor_hits)),
        "shortcut": mode,
        "min_keep": float(min_keep),
        "round_to": round_to,
    }
    if mode == "sketch":
        meta["shortcut_width"] = width
    unscored = [g.id for g in graph.prunable_groups() if g.id not in by_group]
    if unscored:
        meta["unscored_groups"] = unscored
    return PruningPlan(kept=kept, widths=widths, meta=meta)


def _producer_widths(group, own: dict[str, int], kept: torch.Tensor | None) -> dict[str, int]:
    """Each producer's own kept count on its output axis (fixed positions included).

    Producers without a BN of their own cannot be judged by |γ|: they get the group's width.
    """
    out: dict[str, int] = {}
    for slot in group.producers:
        fixed_here = int(group.fixed[slot.channel].sum())
        if slot.module in own:
            out[slot.module] = out.get(slot.module, 0) + own[slot.module] + fixed_here
        else:
            n = len(slot.channel) if kept is None else int(torch.isin(slot.channel, kept).sum())
            out[slot.module] = out.get(slot.module, 0) + n
    return out

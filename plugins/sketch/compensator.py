"""Compensator ``sketch``: Matrix-Sketching compensation of heavily pruned layers.

Seed paper: Sun, Cao, Li, Liu, "Pruning and fine-tuning optimization based on global information"
(Acta Sci. Nat. Univ. Pekinensis 57(4), 2021): an improved Frequent Directions sketch brings the
global information of *all* original filters into a layer pruned by more than ``alpha``, and
reconciles residual adds whose producers were pruned to different widths. The paper does not
print its formula (1); this is **detprune's precise reading** (research/algorithms.md sections
6.4-6.5), close to FilterSketch (Lin et al., TNNLS 2021) without its flaws (section 6.3):

1. Trigger: a group with a producer whose layer prune ratio ``r = 1 - c'/c`` exceeds ``alpha``
   (with per-producer widths from ``--shortcut sketch``, the producer's own ``c'``). All producers
   of a triggered residual group are rebased (one shared basis); other groups keep their selected
   rows bit-identical.
2. ``A`` = the original filters of the group's producers as rows (``c x d``), restricted to the
   *kept input channels of the pruned model*: groups are walked in execution order and each
   producer's input side is first transformed by the upstream rebases (section 6.5 step 5).
   Residual groups stack their producers' ``A`` horizontally: one shared basis for the stream.
3. ``B = FD(A, c')`` (``mode``: ``fd``, ``fd-liberty`` or ``svd``, see ``frequent_directions``),
   minimising ``||A^T A - B^T B||``; ``Q = B A^+`` so ``B = Q A``: the new channels are ``y' = Q y``.
   Every producer gets ``Q A_p`` (its bias ``Q b``); every consumer of the group, on exactly the
   group's slots (concat offsets, flatten->Linear repeats), gets its input mixed by ``Q^+``.
4. BatchNorm: ``bn="fold"`` (default) sketches the BN-folded filters ``gamma/sigma * W`` (the
   filters as the layer acts at inference, so a channel NS silenced with ``gamma ~ 0`` weighs
   nothing in the Gram) and sets the BN so that the layer computes ``Q`` times the original
   post-BN output exactly; ``reinit`` re-initialises it and
   re-estimates its statistics (AdaBN); see ``sketch_bn``. ``recalibrate="all"`` then runs AdaBN
   on every BN (the layers downstream of a pruned one see new activation statistics).

``variant="procrustes"`` keeps channel identities: the sketch is rotated (orthogonal Procrustes,
which leaves ``B^T B`` unchanged) onto the kept original filters, so new channel ``j`` stays close
to the kept channel whose place it takes, and the BN is kept (``bn="keep"``).
``variant="filtersketch"`` is FilterSketch's initialisation (Lin et al., TNNLS 2021) as a control:
the layer's filters become their sketch ``B``, but the consumers are not re-based: they read sketch
channel ``j`` where they read kept channel ``j`` (plain selection of their input slices).

Limits: channel mixing is exact only through linear maps; the activation between a producer and
its consumers makes ``Q^+ act(Q y) != act(y)`` (measured in benchmarks/sketch_before_finetune.py),
and a channel gate ``x * s`` (squeeze-excitation) is not linear in the mixed channels, which the
graph does not distinguish from an add. On rebased rows the compensator recomputes weights,
biases and BN from the dense model, replacing what an earlier compensator (``fold-beta``) put
there; elsewhere earlier edits survive.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.plugin.protocols import Compensator
from detprune_plugins.sketch.bn import BN_MODES, calibrate, norm_targets, write_norms
from detprune_plugins.sketch.frequent_directions import (
    MODES,
    procrustes_align,
    rebase_factors,
    sketch,
)
from detprune_plugins.sketch.layout import GroupLayout, KeptIndex, layout, pair_norms
from detprune_plugins.sketch.weights import (
    Rebase,
    fold_factors,
    input_side,
    producer_rows,
    write_module,
)

log = logging.getLogger(__name__)
VARIANTS = ("rebase", "procrustes", "filtersketch")


class SketchOptionError(DetpruneError, ValueError):
    """An option of the ``sketch`` compensator is out of range."""


class Sketch(Compensator):
    """Matrix-Sketching compensation (Frequent Directions) for groups pruned above alpha."""

    def __init__(
        self,
        alpha: float = 0.3,
        mode: str = "fd",
        calib_batches: int = 20,
        variant: str = "rebase",
        bn: str | None = None,
        recalibrate: str = "new",
    ) -> None:
        """
        :param alpha: compensate a group when a producer's layer prune ratio exceeds it (the paper's α;
            0.2 / 0.3 / 0.5 in its Table 2); ``--alpha``.
        :param mode: the sketch: ``fd`` (Frequent Directions, 2ℓ buffer, the paper's), ``fd-liberty``
            (Liberty's ℓ buffer) or ``svd`` (the exact optimum, for tests).
        :param calib_batches: training batches for the new channels' BN statistics (0: propagate them).
        :param variant: ``rebase`` (new filters B = QA, consumers re-based with Q⁺), ``procrustes``
            (the sketch rotated onto the kept filters: channel identities stay) or ``filtersketch``
            (FilterSketch's init: filters sketched, consumers keep their selected input slices).
        :param bn: ``fold`` (sketch BN-folded filters; default for rebase), ``reinit`` (γ=1, β=0, AdaBN)
            or ``keep`` (default for procrustes).
        :param recalibrate: ``new`` (only the sketched channels' BN) or ``all`` (AdaBN on every BN after).
        """
        if mode not in MODES:
            raise SketchOptionError(f"compensator 'sketch': mode must be one of {', '.join(MODES)}, got {mode!r}")
        if variant not in VARIANTS:
            raise SketchOptionError(
                f"compensator 'sketch': variant must be one of {', '.join(VARIANTS)}, got {variant!r}"
            )
        bn = bn or ("keep" if variant == "procrustes" else "fold")
        if bn not in BN_MODES:
            raise SketchOptionError(f"compensator 'sketch': bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        if not -1.0 <= float(alpha) < 1.0:
            raise SketchOptionError(f"compensator 'sketch': alpha must be in [-1, 1) (a prune ratio), got {alpha!r}")
        if recalibrate not in ("new", "all"):
            raise SketchOptionError(f"compensator 'sketch': recalibrate must be 'new' or 'all', got {recalibrate!r}")
        if int(calib_batches) < 0:
            raise SketchOptionError(f"compensator 'sketch': calib_batches must be >= 0, got {calib_batches!r}")
        self.alpha, self.mode, self.variant, self.bn = float(alpha), mode, variant, bn
        self.calib_batches, self.recalibrate = int(calib_batches), recalibrate
        self.report: dict[str, Any] = {}

    # ---- the trip --------------------------------------------------------------------------
    def compensate(self, original: nn.Module, pruned: nn.Module, plan, ctx) -> None:
        graph = ctx.require_graph(original)
        pairs = pair_norms(graph)
        kept = KeptIndex(graph, plan)
        entries, rebases = [], {}
        candidates = []
        for gid in sorted(plan.kept):
            group = graph.group(gid)
            entry = self._entry(group, plan)
            entries.append(entry)
            if not entry["triggered"]:
                entry["reason"] = f"prune ratio {entry['layer_ratio']:.3f} <= alpha {self.alpha}"
                continue
            lay = layout(graph, group, plan, original, self.bn, pairs)
            if lay.reason:
                entry["reason"] = lay.reason
                log.info("sketch: group %d keeps plain selection: %s", gid, lay.reason)
                continue
            candidates.append((self._first_use(graph, group), lay, entry))
        for _, lay, entry in sorted(candidates, key=lambda c: c[0]):  # upstream first (section 6.5 step 5)
            rb = self._rebase(original, graph, kept, lay, rebases)
            rebases[rb.gid] = rb
            entry.update(
                rebased=True,
                reason="",
                mixed=int(lay.mix.numel()),
                sketch=int(lay.kept.numel()),
                gram_error=rb.gram_error,
            )
        with torch.no_grad():
            for name in self._touched(rebases):
                write_module(original, pruned, graph, kept, name, rebases, self.bn)
            targets = norm_targets(original, kept, rebases, self.bn)
            write_norms(pruned, targets)
        loader = getattr(ctx, "train_loader", None) if ctx is not None else None
        everything = self.recalibrate == "all" and bool(plan.kept)
        seen = (
            calibrate(pruned, targets, loader, self.calib_batches, everything, progress=ctx.progress)
            if loader is not None
            else 0
        )
        stats = f"calibrated on {seen} batches" if seen and targets else "keep" if self.bn == "keep" else "propagated"
        if everything and seen:
            stats += f"; AdaBN on every BN ({seen} batches)"
        self.report = {
            "compensator": "sketch",
            "alpha": self.alpha,
            "mode": self.mode,
            "variant": self.variant,
            "bn": self.bn,
            "recalibrate": self.recalibrate,
            "bn_statistics": stats,
            "rebased": sorted(rebases),
            "groups": entries,
        }

    # ---- pieces ----------------------------------------------------------------------------
    def _entry(self, group, plan) -> dict[str, Any]:
        """The trigger: the largest *layer* prune ratio among the group's producers (a producer's
        kept share of its own output positions; with ``plan.widths``, its own count) above alpha."""
        kept_count = plan.kept_count(group.id, group.size)
        kept = plan.kept.get(group.id, torch.arange(group.size))
        n_pos: dict[str, int] = {}
        n_kept: dict[str, int] = {}
        for slot in group.producers:
            n_pos[slot.module] = n_pos.get(slot.module, 0) + len(slot.index)
            n_kept[slot.module] = n_kept.get(slot.module, 0) + int(torch.isin(slot.channel, kept).sum())
        layer = {p: 1.0 - n_kept[p] / n_pos[p] for p in n_pos}
        widths = {p: int(w) for p, w in plan.widths.get(group.id, {}).items()}
        layer.update({p: 1.0 - w / n_pos[p] for p, w in widths.items() if p in n_pos})
        top = max(layer.values(), default=0.0)
        entry = {
            "group": group.id,
            "size": group.size,
            "kept": kept_count,
            "ratio": 1.0 - kept_count / group.size,
            "layer_ratio": top,
            "triggered": top > self.alpha,
            "rebased": False,
            "reason": "",
            "producers": group.modules("out"),
            "gram_error": None,
        }
        if widths:
            entry["widths"] = widths
        if len(layer) > 1:  # rebased anyway: a residual stream needs one shared basis (6.5 step 4)
            entry["shared_basis_only"] = sorted(p for p, r in layer.items() if r <= self.alpha)
        return entry

    @staticmethod
    def _first_use(graph, group) -> int:
        return min(graph.records[m].order for m in group.modules("out"))

    def _rebase(self, original, graph, kept: KeptIndex, lay: GroupLayout, done: dict[int, Rebase]) -> Rebase:
        """Sketch one group: stack its producers' (input-transformed) filters, FD, Q = B A^+."""
        blocks = []
        for slot in lay.slots("out"):
            w_in = input_side(original, graph, kept, slot.module, done)
            scale, _ = fold_factors(original, lay, slot.module, self.bn, w_in.device)
            blocks.append(producer_rows(w_in, graph, lay, slot.module, scale).flatten(1))
        A = torch.cat(blocks, dim=1)  # [m, sum d_p]: one shared basis for a residual stream
        ell = int(lay.kept.numel())
        B = sketch(A, ell, self.mode)
        if self.variant == "procrustes":
            rows = torch.searchsorted(lay.mix, lay.kept)
            B = procrustes_align(B, A[rows])
        Q, err = rebase_factors(A, B)
        if self.variant == "filtersketch":  # consumers read sketch channel j where kept channel j was
            select = torch.zeros(Q.shape[1], Q.shape[0], dtype=Q.dtype, device=Q.device)
            select[torch.searchsorted(lay.mix, lay.kept).to(Q.device), torch.arange(Q.shape[0], device=Q.device)] = 1
            return Rebase(lay, Q, select, err)
        return Rebase(lay, Q, torch.linalg.pinv(Q), err)

    @staticmethod
    def _touched(rebases: dict[int, Rebase]) -> list[str]:
        names: dict[str, None] = {}
        for rb in rebases.values():
            for slot in rb.layout.group.slots:
                if slot.role in ("out", "in"):
                    names[slot.module] = None
        return list(names)


@detprune.hookimpl
def detprune_compensators():
    return {"sketch": Sketch}

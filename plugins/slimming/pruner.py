"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017, arXiv 1708.06519) with SlimYOLOv3's detector practice (Zhang et al. 2019).

§3.2 of the paper: train with an L1 penalty λΣ|γ| on the BN scale factors; its sub-gradient is
added after ``backward`` and before the optimizer step, ``γ.grad += s·sign(γ)`` (``updateBN`` in
both reference repositories). §3.3: prune every channel whose |γ| falls under one global
threshold at the target ratio, then fine-tune. The threshold, the residual-group modes
(``shared`` | ``union`` | ``sketch``) and the per-layer floor live in ``slimming_threshold``; the
γ monitoring (to pick ``s``) in ``slimming_monitor``; which BNs count in ``slimming_sites``.

Use::

    pruner = detprune.plugins().pruner("slimming", s=1e-4, min_keep=0.1, shortcut="shared")
    pruner.attach(graph)                       # which BNs are prunable (else traced on the first batch)
    Trainer(model, adapter, ..., pruner=pruner).fit()   # sparsity training + γ history
    plan = pruner.plan(model, graph, PruneContext(ratio=0.5, round_to=8))
    pruner.plot(out_dir)                       # out_dir/gamma.png
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Criterion, Pruner
from detprune_plugins.slimming import monitor
from detprune_plugins.slimming.sites import (
    BN_TYPES,
    BNSite,
    bn_sites,
    penalty_targets,
    site_gammas,
)
from detprune_plugins.slimming.threshold import MODES, WIDTHS, make_plan

log = logging.getLogger("detprune.slimming")


class BNScale(Criterion):
    """|γ| of the BatchNorms of a channel group, summed over the group (Liu et al. 2017, §3.3)."""

    def score(self, model: nn.Module, group, ctx=None) -> torch.Tensor:
        return group.reduce(model, lambda rows: rows.abs().sum(1), role="through", types=BN_TYPES)


class Slimming(Pruner):
    """Network Slimming: L1 on BN scales while training, one global |γ| threshold (Liu et al. 2017)."""

    def __init__(
        self,
        s: float = 1e-4,
        min_keep: float = 0.1,
        shortcut: str = "shared",
        shortcut_width: str = "min",
        ratio: float | None = None,
    ):
        """
        :param s: sparsity strength λ of §3.2 (1e-4 for VGG and SlimYOLOv3, 1e-5 for ResNet-164).
        :param min_keep: per-layer floor, the fraction of each layer's channels that always stays.
        :param shortcut: how residual (multi-producer) groups answer the threshold: ``shared``,
            ``union`` (SlimYOLOv3's OR-merge) or ``sketch`` (per-producer widths for the sketch
            compensator). ``ctx.options["shortcut"]`` overrides it at ``plan`` time.
        :param shortcut_width: ``sketch`` mode's common width: ``min`` or ``mean`` of the producers'.
        :param ratio: the target ratio, if known before training: the γ log then says where it
            would cut. ``plan`` sets it from ``ctx.ratio``.
        """
        if not (isinstance(s, (int, float)) and s >= 0):
            raise DetpruneError(f"slimming: s (the sparsity strength) must be a number >= 0, got {s!r}")
        if not 0.0 <= float(min_keep) <= 1.0:
            raise DetpruneError(f"slimming: min_keep must be a fraction in [0, 1], got {min_keep!r}")
        if shortcut not in MODES:
            raise DetpruneError(f"slimming: shortcut must be one of {', '.join(MODES)}, got {shortcut!r}")
        if shortcut_width not in WIDTHS:
            raise DetpruneError(f"slimming: shortcut_width must be one of {', '.join(WIDTHS)}, got {shortcut_width!r}")
        self.s, self.min_keep, self.shortcut, self.shortcut_width = float(s), float(min_keep), shortcut, shortcut_width
        self.ratio = ratio
        self.history: list[dict[str, Any]] = []
        self.at_plan: dict[str, Any] | None = None
        self.graph = None
        self._targets: tuple[Any, list] | None = None  # (weakref to model, [(weight, mask)])
        self._sites: tuple[Any, list[BNSite]] | None = None
        self._ctx: PruneContext | None = None
        self._warned = False
        self._traced = False

    # ---- which BNs --------------------------------------------------------------------------
    def attach(self, graph) -> Slimming:
        """Use ``graph`` (the model's ChannelGraph) to tell prunable BN positions from the rest."""
        self.graph = graph
        self._targets = self._sites = None
        return self

    def bind(self, ctx: PruneContext) -> Slimming:
        """The run's context before training (docs/internals.md §4, pruner lifecycle): the target
        ratio for the γ log, and ``ctx.graph`` or ``ctx.adapter``'s protected layers for tracing."""
        self._ctx = ctx
        if self.ratio is None:
            self.ratio = ctx.ratio
        if ctx.graph is not None:
            self.attach(ctx.graph)
        return self

    def _ensure_graph(self, model: nn.Module, images: torch.Tensor | None = None) -> None:
        """Trace ``model`` once when no graph was given: on the bound context's example inputs (with
        the adapter's protected layers), else on one image of the first batch."""
        if self.graph is not None or self._traced:
            return
        ctx = self._ctx
        if ctx is not None and (ctx.graph is not None or ctx.example_inputs or ctx.adapter is not None):
            where = "the context's example inputs"
        elif images is not None:
            ctx, where = PruneContext(example_inputs=(images[:1],)), "the first batch"
        else:
            return
        self._traced = True
        try:
            self.attach(ctx.require_graph(model))
            log.info("slimming: traced the model on %s to find its prunable BatchNorms", where)
        except DetpruneError as exc:
            log.warning(
                "slimming: could not trace the model (%s); the sparsity term goes on every affine BatchNorm", exc
            )

    def _sites_for(self, model: nn.Module) -> list[BNSite] | None:
        if self.graph is None:
            return None
        if self._sites is None or self._sites[0]() is not model:
            self._sites = (weakref.ref(model), bn_sites(self.graph, model))
        return self._sites[1]

    def _penalised(self, model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor | None]]:
        if self._targets is not None and self._targets[0]() is model:
            return self._targets[1]
        self._ensure_graph(model)
        sites = self._sites_for(model)
        if sites is None:
            if not self._warned:
                log.warning(
                    "slimming: no channel graph (pruner.attach(graph) or pruner.bind(ctx)); the sparsity "
                    "term goes on every affine BatchNorm, protected ones included"
                )
                self._warned = True
            targets = [(m.weight, None) for m in model.modules() if isinstance(m, BN_TYPES) and m.weight is not None]
        else:
            targets = penalty_targets(sites, model)
        self._targets = (weakref.ref(model), targets)
        return targets

    def _gammas(self, model: nn.Module) -> torch.Tensor:
        self._ensure_graph(model)
        sites = self._sites_for(model)
        if sites is not None:
            vals = site_gammas(model, sites)
        else:
            vals = [
                m.weight.detach().abs().float().cpu()
                for m in model.modules()
                if isinstance(m, BN_TYPES) and m.weight is not None
            ]
        return torch.cat(vals) if vals else torch.zeros(0)

    # ---- Trainer callbacks --------------------------------------------------------------------
    def loss_term(self, model: nn.Module, outputs: Any, batch: Any) -> float:
        """Adds nothing: the first batch lets an unattached, unbound pruner trace the model (one
        image), so BNs whose group reaches an output are left alone."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._ensure_graph(model, images if isinstance(images, torch.Tensor) else None)
        return 0.0

    @torch.no_grad()
    def on_after_backward(self, model: nn.Module) -> None:
        """§3.2: ``γ.grad += s·sign(γ)`` on every prunable BN scale (BNs without a gradient skipped)."""
        if self.s == 0:
            return
        for weight, mask in self._penalised(model):
            if weight.grad is None:
                continue
            sign = weight.detach().sign()
            if mask is not None:
                sign.mul_(mask)
            weight.grad.add_(sign, alpha=self.s)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Record the |γ| distribution of the epoch just trained (``history``; logged)."""
        snap = monitor.snapshot(self._gammas(model), self.ratio)
        snap["epoch"] = int(epoch)
        self.history.append(snap)
        log.info("%s", monitor.describe(snap, f"slimming epoch {epoch + 1}"))

    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "history": [dict(h) for h in self.history], "ratio": self.ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        if self.ratio is None:
            self.ratio = state.get("ratio")

    # ---- pruning --------------------------------------------------------------------------------
    def plan(self, model: nn.Module, graph, ctx: PruneContext) -> PruningPlan:
        """§3.3: one global |γ| threshold at ``ctx.ratio``; floor, rounding and shortcut mode applied."""
        opts = ctx.options or {}
        mode = opts.get("shortcut") or self.shortcut  # a pipeline passes None for "not given"
        width = opts.get("shortcut_width") or self.shortcut_width
        min_keep = max(self.min_keep, float(ctx.min_keep or 0.0))
        sites = bn_sites(graph, model)
        plan = make_plan(
            model, graph, sites, ctx.ratio, mode=mode, width=width, min_keep=min_keep, round_to=ctx.round_to
        )
        plan.meta["s"] = self.s
        self.ratio = ctx.ratio
        self.at_plan = monitor.snapshot(torch.cat(site_gammas(model, sites)), ctx.ratio)
        m = plan.meta
        log.info(
            "slimming: asked %.3g, achieved %.3g of %d BN channels (threshold %s, shortcut %s); "
            "%d layer(s) at the %g floor",
            m["asked_ratio"],
            m["achieved_ratio"],
            m["channels"],
            "none" if m["threshold"] is None else f"{m['threshold']:.4g}",
            mode,
            len(m["floor_hits"]),
            min_keep,
        )
        return plan

    def plot(self, out_dir: str | Path, ratio: float | None = None) -> Path | None:
        """Write ``out_dir/gamma.png``: |γ| histograms and sorted curves per epoch, threshold marked."""
        return monitor.plot(
            self.history, out_dir, ratio if ratio is not None else self.ratio, at_plan=self.at_plan, s=self.s
        )


@detprune.hookimpl
def detprune_pruners():
    return {"slimming": Slimming}


@detprune.hookimpl
def detprune_criteria():
    return {"bn-scale": BNScale}

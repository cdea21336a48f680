"""The seed paper's Table 2, and the controls it omits: does Matrix-Sketching compensation let Network
Slimming prune harder at the same accuracy?

The claim (Sun et al. 2021, Table 2, VGG16 on CIFAR-10): NS at ratio p1 gives 0.84M / 92.6 %; NS at a
higher ratio p2 plus sketching the layers pruned beyond α gives 0.76M / 93.4, 93.3, 93.2 % for α =
0.2, 0.3, 0.5 — fewer parameters *and* better accuracy. The paper compares NS@p1 with NS+sketch@p2 and
never runs NS@p2 without the sketch, so the table cannot tell what the sketch adds. Here, from one
sparsity-trained dense checkpoint per seed (Network Slimming's s·sign(γ), the ``slimming`` pruner),
every arm is fine-tuned with the same budget, and scored on every test image:

* ``ns@p1``                 plain NS at p1 (the paper's NS row);
* ``ns+adabn@p2``           plain NS at p2 + AdaBN on every BN: **the missing control**;
* ``ns+fold+adabn@p2``      + Network Slimming's β folding (``fold-beta``) before AdaBN;
* ``ns+sketch(α)@p2``       + the ``sketch`` compensator (``rebase``, BN folded) at each α, AdaBN on every BN;
* ``procrustes@p2``         the sketch rotated onto the kept filters (channel identities kept), BN folded;
* ``filtersketch@p2``       FilterSketch's init (Lin et al. 2021): every pruned layer's filters sketched,
  consumers not re-based;
* ``scratch@p2``            the p2 architecture trained from scratch for the dense + fine-tune epochs
  (Liu et al., "Rethinking the value of network pruning").

p2 is chosen so that the per-layer prune ratios straddle every α (the notes count the layers below,
between and above); the rows say which comparisons the table makes and which it omits.

    python -m detprune.bench.fidelity.sketch [--full] [--json]
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

import detprune
from detprune.bench.fidelity.common import Study, params, row
from detprune.plugin.context import PruneContext
from detprune_plugins.sketch.bn import adabn

QUICK = dict(width=0.125, n_train=2500, n_test=None, epochs=10, s=5e-3, lr=0.1, batch=64, p1=0.55, p2=0.65,
             alphas=(0.2, 0.5), calib_batches=10, finetune_epochs=3, finetune_lr=0.01, seeds=3, threads=1)  # fmt: skip
FULL = dict(width=0.125, n_train=None, n_test=None, epochs=30, s=5e-3, lr=0.1, batch=64, p1=0.55, p2=0.65,
            alphas=(0.2, 0.5), calib_batches=20, finetune_epochs=10, finetune_lr=0.01, seeds=3,
            threads=None)  # fmt: skip


def _layer_ratios(graph, plan) -> list[float]:
    """Prune ratio of every prunable group's producer layer (VGG: one producer per group)."""
    return [1.0 - plan.kept_count(g.id, g.size) / g.size for g in graph.prunable_groups()]


def _straddle(ratios: list[float], alphas: tuple[float, ...]) -> str:
    return "; ".join(f"α {a}: {sum(r <= a for r in ratios)} layers at or below, {sum(r > a for r in ratios)} above"
                     for a in alphas)  # fmt: skip


def _reinit(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh weights for the same architecture (the from-scratch control)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


def _starts(dense, graph, plans, cfg, study) -> dict[str, torch.nn.Module]:
    """Every arm's starting point, compensated and recalibrated, before fine-tuning."""
    hub = detprune.plugins()
    ctx = PruneContext(graph=graph, train_loader=study.train, progress=False)
    p2 = plans["p2"]
    arms = {"ns@p1": graph.apply(dense, plans["p1"])}
    arms["ns+adabn@p2"] = graph.apply(dense, p2)
    adabn(arms["ns+adabn@p2"], study.train, cfg["calib_batches"], progress=False)
    arms["ns+fold+adabn@p2"] = graph.apply(dense, p2)
    hub.compensator("fold-beta").compensate(dense, arms["ns+fold+adabn@p2"], p2, ctx)
    adabn(arms["ns+fold+adabn@p2"], study.train, cfg["calib_batches"], progress=False)
    sketches = {f"ns+sketch({a})@p2": dict(alpha=a) for a in cfg["alphas"]}
    sketches["procrustes@p2"] = dict(alpha=min(cfg["alphas"]), variant="procrustes", bn="fold")
    sketches["filtersketch@p2"] = dict(alpha=0.0, variant="filtersketch")
    for name, options in sketches.items():
        model = graph.apply(dense, p2)
        comp = hub.compensator("sketch", calib_batches=cfg["calib_batches"], recalibrate="all", **options)
        comp.compensate(dense, model, p2, ctx)
        arms[name] = model
    return arms


def run_seed(cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One seed: the dense NS checkpoint, every arm before and after fine-tuning, the paired rows."""
    logging.getLogger("detprune").setLevel(logging.WARNING)
    study = Study(cfg, seed)
    hub = detprune.plugins()
    dense = study.build()
    slimming = hub.pruner("slimming", s=cfg["s"])
    slimming.attach(study.graph(dense))
    study.fit(dense, cfg["epochs"], cfg["lr"], pruner=slimming)
    graph = study.graph(dense)
    plans = {k: slimming.plan(dense, graph, PruneContext(ratio=cfg[k], options={"shortcut": "shared"}))
             for k in ("p1", "p2")}  # fmt: skip
    arms = _starts(dense, graph, plans, cfg, study)
    before = {name: study.top1(m) for name, m in arms.items()}
    arms["scratch@p2"] = _reinit(graph.apply(dense, plans["p2"]), 10_000 + seed)
    study.fit(arms["scratch@p2"], cfg["epochs"] + cfg["finetune_epochs"], cfg["lr"])
    for name, model in arms.items():
        if name != "scratch@p2":
            study.fit(model, cfg["finetune_epochs"], cfg["finetune_lr"])
    after = {name: study.top1(m) for name, m in arms.items()}
    size = {name: params(m) for name, m in arms.items()}

    ratios = _layer_ratios(graph, plans["p2"])
    notes = (f"{study.describe()}; NS s={cfg['s']} {cfg['epochs']} ep, dense top1 {study.top1(dense):.4f} "
             f"({params(dense):,} params); p1 {cfg['p1']} -> {size['ns@p1']:,} params, p2 {cfg['p2']} -> "
             f"{size['ns+adabn@p2']:,}; p2 layer ratios {min(ratios):.2f}..{max(ratios):.2f} "
             f"({_straddle(ratios, cfg['alphas'])}); fine-tune {cfg['finetune_epochs']} ep lr {cfg['finetune_lr']}, "
             f"AdaBN {cfg['calib_batches']} batches in every p2 arm")  # fmt: skip
    ft = f"top1 after {cfg['finetune_epochs']} ft ep"
    rows = []
    for a in cfg["alphas"]:  # Table 2 as printed: NS+sketch at the higher ratio vs NS at the lower
        name = f"ns+sketch({a})@p2"
        rows.append(row(name, "ns@p1", f"Table 2: {ft}", after[name], after["ns@p1"], size[name], size["ns@p1"], notes))
    rows.append(row("ns+adabn@p2", "ns@p1", f"Table 2 without the sketch: {ft}", after["ns+adabn@p2"],
                    after["ns@p1"], size["ns+adabn@p2"], size["ns@p1"], notes))  # fmt: skip
    control = "ns+adabn@p2"
    arms_p2 = [*(f"ns+sketch({a})@p2" for a in cfg["alphas"]), "ns+fold+adabn@p2", "procrustes@p2", "filtersketch@p2"]
    for name in arms_p2:
        rows.append(row(name, control, "top1 before fine-tune", before[name], before[control], size[name],
                        size[control], notes))  # fmt: skip
    for name in [*arms_p2, "scratch@p2"]:
        rows.append(row(name, control, ft, after[name], after[control], size[name], size[control], notes))
    return rows


if __name__ == "__main__":
    from detprune.bench.fidelity.runner import method_main

    sys.exit(method_main("sketch"))

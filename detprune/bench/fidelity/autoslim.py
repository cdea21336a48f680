"""Fidelity of AutoSlim (Yu & Huang, arXiv 1903.11728, §4, Fig. 1 / Table 1): at the same FLOPs, do the
channel numbers found by greedy slimming of a wider slimmable supernet, retrained from scratch, beat the
uniform width multiplier?

The claim: a slimmable supernet wider than the target (the paper searches up to 1.5x the default channels)
is trained once with the sandwich rule and in-place distillation; greedy slimming (one channel bin at a
time, the one whose removal hurts a held-out score least) stops at each FLOPs budget; the architectures
found, trained from scratch, are more accurate than the uniformly scaled networks of the same FLOPs.

Protocol per seed (target width ``w``, supernet ``supernet``·``w``, every arm's data, seed and schedule the same):

* the supernet (VGG16-CIFAR at 1.5w, so every searched layer may keep up to 1.5x the target's channels)
  is trained slimmable by the ``autoslim`` pruner through the Trainer's ``train_step``;
* budgets: the FLOPs of the *uniform* networks at ``multipliers`` of the target width (1.0x, 0.75x, 0.5x of
  ``w``), counted by the same FLOPs counter as the plugin's exact FLOPs model
  (:mod:`detprune_plugins.autoslim.flops`), i.e. given to the search as exact fractions of the supernet's
  FLOPs; greedy slimming (:func:`~detprune_plugins.autoslim.search.greedy_slimming`) stops at the first
  width at or under each budget, scored on training images held out of every arm's training
  (``Study(holdout=...)``); with ``top_up`` the width is then re-grown, one bin at a time (best score
  first), while it still fits the budget, and with ``fill`` what the bins leave is spent one channel at a
  time (layers in the order the score prefers their next bin), so that "matched FLOPs" means within a
  channel's FLOPs of the budget (steps the paper does not take; the notes give every stage's FLOPs);
* the found architecture and the uniform one are both built fresh (network-slimming init, the same seed)
  and trained from scratch with the same epochs and schedule (``Study.fit``); top-1 on every test image.

Rows per budget ``m``: ``autoslim@mx`` vs ``uniform@mx``, "top1 retrained from scratch"; with
``supernet_rows`` also both widths cut out of the supernet, BN recalibrated, before any retraining (the
paper's Fig. 1 quantity). Notes: the budget, the found FLOPs (counted on the built model) and their
ratio. ``QUICK`` is a smoke test (a few epochs on a sample of CIFAR-10), not a reproduction.

    python -m detprune.bench.fidelity.autoslim [--full] [--json]
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import torch

import detprune
from detprune.bench.fidelity.common import Study, params, row
from detprune.eval.measure import count_flops
from detprune.graph.plan import PruningPlan
from detprune_plugins.autoslim.flops import FlopModel
from detprune_plugins.autoslim.pruner import AutoSlim
from detprune_plugins.autoslim.score import Scorer, take_batches
from detprune_plugins.autoslim.search import found_config, greedy_slimming
from detprune_plugins.autoslim.slimmable import bn_state, calibrate_bn, load_bn_state
from detprune_plugins.models.base import scaled
from detprune_plugins.models.vgg import VGG16_CFG, VGGCifar

# bins: 6 (QUICK) and 12 (FULL) make every uniform budget width (m/1.5 = 4/6, 3/6, 2/6 of the supernet's
# channels at these widths) a point of the search space, so the search is never handicapped by its grid.
QUICK = dict(width=0.125, supernet=1.5, n_train=1500, holdout=256, n_test=None, batch=64, lr=0.1, epochs=3,
             retrain_epochs=4, multipliers=(1.0, 0.75, 0.5), bins=6, num_random=2, bn="batch", score_batches=2,
             calib_batches=4, top_up=True, fill=True, supernet_rows=False, seeds=3, threads=1)  # fmt: skip
FULL = dict(width=0.125, supernet=1.5, n_train=None, holdout=500, n_test=None, batch=64, lr=0.1, epochs=10,
            retrain_epochs=10, multipliers=(1.0, 0.75, 0.5), bins=12, num_random=2, bn="batch", score_batches=4,
            calib_batches=8, top_up=True, fill=True, supernet_rows=True, seeds=3, threads=None)  # fmt: skip


def _arch(model: torch.nn.Module) -> tuple[int, ...]:
    """The conv channel counts of a VGG16-CIFAR, in order."""
    return tuple(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _uniform_arch(width: float) -> tuple[int, ...]:
    """Channels of the uniform network at ``width`` (what ``vgg16-cifar`` builds at that width)."""
    return tuple(scaled(int(v), width) for v in VGG16_CFG if v != "M")


def _fresh(arch: tuple[int, ...], seed: int, num_classes: int) -> torch.nn.Module:
    """A freshly initialised VGG16-CIFAR with these conv channels: both arms start the same way."""
    it = iter(arch)
    torch.manual_seed(seed)
    return VGGCifar(tuple(v if v == "M" else next(it) for v in VGG16_CFG), num_classes)


def _conv_outputs(supernet: torch.nn.Module, graph) -> list[tuple[int, np.ndarray]]:
    """Per conv of the supernet, in order: its channel group and its output channel slots."""
    names = [n for n, m in supernet.named_modules() if isinstance(m, torch.nn.Conv2d)]
    outs = [np.asarray(graph.records[n].out) for n in names]
    return [(int(graph.group_of[out[0]]), out) for out in outs]


def _first_k(supernet: torch.nn.Module, graph, arch: tuple[int, ...]) -> PruningPlan:
    """The plan keeping the first ``arch[i]`` channels of the supernet's i-th conv (slimmable first-k order)."""
    kept = {}
    for (gid, out), k in zip(_conv_outputs(supernet, graph), arch):
        if k < len(out):
            kept[gid] = torch.as_tensor(np.sort(graph.chan_of[out[:k]]), dtype=torch.long)
    return PruningPlan(kept)


def _top_up(slim, fraction, scorer, config: dict[int, int], target: float) -> dict[int, int]:
    """Grow the best-scoring unit by one bin while the width still fits ``target``: greedy slimming stops
    at the first width under the budget, up to one bin below it."""
    while True:
        grown = [{**config, u: config[u] + 1} for u in slim.units if config[u] < len(slim.levels[u])]
        fits = [c for c in grown if fraction(c) <= target + 1e-12]
        if not fits:
            return config
        config = max(fits, key=scorer)  # ties: the first unit, deterministic


def _fill(arch: tuple[int, ...], order: list[int], cap: tuple[int, ...], fits) -> tuple[int, ...]:
    """Spend what the bins leave of the budget one channel at a time: layers in ``order`` (the score's
    preference for their next bin), each grown while ``fits``; the retrained net needs no bin grid."""
    arch = list(arch)
    for i in order:
        while arch[i] < cap[i] and fits((*arch[:i], arch[i] + 1, *arch[i + 1 :])):
            arch[i] += 1
    return tuple(arch)


def _fill_order(slim, scorer, config: dict[int, int], layer_of: dict[int, int]) -> list[int]:
    """Conv indices, best first by the held-out score of growing their unit one more bin."""
    grown = {u: scorer({**config, u: config[u] + 1}) for u in slim.units if config[u] < len(slim.levels[u])}
    return [layer_of[u] for u in sorted(grown, key=grown.get, reverse=True)]


def _train_supernet(study: Study, cfg: dict[str, Any], seed: int):
    """The 1.5x supernet trained with the sandwich rule and in-place distillation; (model, adapter, pruner)."""
    adapter = detprune.plugins().adapter("vgg16-cifar", width=cfg["width"] * cfg["supernet"])
    torch.manual_seed(seed)
    supernet = adapter.build()
    pruner = AutoSlim(bins=cfg["bins"], num_random=cfg["num_random"], bn=cfg["bn"], seed=seed, progress=False)
    pruner.attach(study.graph(supernet))
    own, study.adapter = study.adapter, adapter  # Study.fit trains with the study's adapter
    try:
        study.fit(supernet, cfg["epochs"], cfg["lr"], pruner=pruner)
    finally:
        study.adapter = own
    return supernet, adapter, pruner


def _row(study: Study, name: str, base: str, metric: str, nets: dict[str, torch.nn.Module], notes: str):
    """The found net (method) against the uniform one (baseline), top-1 on every test image."""
    found, uniform = nets["found"], nets["uniform"]
    return row(name, base, metric, study.top1(found), study.top1(uniform), params(found), params(uniform), notes)


def run_seed(cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One seed: supernet, one greedy search to every budget, both arms of every budget retrained and scored."""
    logging.getLogger("detprune").setLevel(logging.WARNING)
    study = Study(cfg, seed, holdout=cfg["holdout"])
    num_classes = study.adapter.args["num_classes"]
    supernet, adapter, pruner = _train_supernet(study, cfg, seed)
    graph = study.graph(supernet)
    inputs = tuple(adapter.example_inputs(1))  # on the CPU, for the fresh (CPU) nets
    device = next(supernet.parameters()).device  # the Trainer's device
    flops = FlopModel(supernet, graph, tuple(x.to(device) for x in inputs))

    # budgets: counted FLOPs of the uniform networks, as exact fractions of the supernet's FLOPs
    mults = tuple(float(m) for m in cfg["multipliers"])
    uniform = {m: _uniform_arch(cfg["width"] * m) for m in mults}
    _flops = lambda a: count_flops(_fresh(a, seed, num_classes), inputs)  # noqa: E731
    budget = {m: _flops(uniform[m]) for m in mults}
    target = {m: budget[m] / flops.dense for m in mults}

    slim = pruner.slimmable(supernet, graph)
    calib = [b[0].to(device) for b in take_batches(study.train, cfg["calib_batches"], seed=seed + 1)]
    scorer = Scorer(supernet, slim, adapter, take_batches(study.holdout, cfg["score_batches"], seed=seed),
                    calib if cfg["bn"] == "calibrate" else [], metric="top1", bn=cfg["bn"])  # fmt: skip
    fraction = lambda c: flops(slim.keep_raw(c)) / flops.dense  # noqa: E731
    saved = bn_state(supernet)
    try:
        search = greedy_slimming(slim, flops, scorer, list(target.values()), progress=False)
        greedy = {m: found_config(search, target[m]) for m in mults}
        found = {m: _top_up(slim, fraction, scorer, greedy[m], target[m]) if cfg["top_up"] else greedy[m]
                 for m in mults}  # fmt: skip
        layer_of = {gid: i for i, (gid, _) in enumerate(_conv_outputs(supernet, graph))}
        order = {m: _fill_order(slim, scorer, found[m], layer_of) if cfg["fill"] else [] for m in mults}
    finally:
        load_bn_state(supernet, saved)
        slim.detach()
    plans = {m: slim.plan_of(found[m]) for m in mults}
    binned = {m: _arch(graph.apply(supernet, plans[m])) for m in mults}
    cap = _arch(supernet)
    arch = {m: _fill(binned[m], order[m], cap, lambda a, m=m: _flops(a) <= budget[m]) for m in mults}

    rows = []
    for m in mults:
        name, base = f"autoslim@{m:g}x", f"uniform@{m:g}x"
        nets = {k: _fresh(a, seed, num_classes) for k, a in (("found", arch[m]), ("uniform", uniform[m]))}
        got = count_flops(nets["found"], inputs)
        if got > budget[m]:
            raise AssertionError(f"autoslim: found width has {got} FLOPs, over the budget {budget[m]}")
        ratio = got / budget[m]
        notes = (f"{study.describe()}; supernet width {cfg['width'] * cfg['supernet']:g} ({params(supernet):,} "
                 f"params, {flops.dense / 1e6:.2f} MFLOPs), {cfg['epochs']} sandwich ep (1+1+{cfg['num_random']} "
                 f"widths, in-place distillation), {cfg['bins']} bins; greedy scored on {cfg['score_batches']} "
                 f"held-out batches, bn={cfg['bn']}, {len(search['history'])} steps; budget {m:g}x of width "
                 f"{cfg['width']} = {budget[m] / 1e6:.3f} MFLOPs ({target[m]:.4f} of the supernet); greedy "
                 f"{fraction(greedy[m]) * flops.dense / budget[m]:.4f} of it"
                 + (f", topped up {fraction(found[m]) * flops.dense / budget[m]:.4f}" if cfg["top_up"] else "")
                 + (f", filled by single channels {ratio:.4f}" if cfg["fill"] else "")
                 + f"; found {got / 1e6:.3f} MFLOPs = {ratio:.4f} of the budget"
                 + ("" if ratio >= 0.99 else " (NOT within 1 %)")
                 + f"; channels found {list(arch[m])} vs uniform {list(uniform[m])}; both retrained from scratch "
                 f"{cfg['retrain_epochs']} ep lr {cfg['lr']}")  # fmt: skip
        for net in nets.values():
            study.fit(net, cfg["retrain_epochs"], cfg["lr"])
        rows.append(_row(study, name, base, "top1 retrained from scratch", nets, notes))
        if cfg["supernet_rows"]:
            cut = {k: graph.apply(supernet, p) for k, p in (("found", plans[m]), ("uniform",
                   _first_k(supernet, graph, uniform[m])))}  # fmt: skip
            for net in cut.values():
                calibrate_bn(net, calib)
            rows.append(_row(study, name, base, "top1 in supernet (BN recalibrated)", cut, notes))
    return rows


if __name__ == "__main__":
    from detprune.bench.fidelity.runner import method_main

    sys.exit(method_main("autoslim"))

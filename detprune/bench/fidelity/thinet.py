"""Fidelity of ThiNet (Luo et al., ICCV 2017): does choosing channels by how well the *next* layer's
output is reconstructed beat weight-magnitude, random and activation criteria at equal parameters?

The paper's claim (§4.1, different filter selection criteria): at the same compression
ThiNet's data-driven choice loses less accuracy than filter L1, APoZ and random selection before
any fine-tuning, its least-squares scaling (§3.2) recovers more, and the advantage survives
fine-tuning. Protocol per seed: one dense VGG16-CIFAR; every conv group loses each of ``ratios``
of its channels at once, so every arm removes the same number per group and has the same parameters:

* ``thinet``: ThiNet's greedy selection on the dense model (one shot, no scaling);
* ``thinet+lsq``: the same plan, then the ``thinet-lsq`` compensator (§3.2 scaling);
* ``l1`` (Li et al. 2017), ``random`` and ``apoz`` (Hu et al. 2016): ``oneshot`` with that criterion.

Rows: top-1 on every test image before fine-tuning (thinet and thinet+lsq vs each baseline), the
relative squared logit error against the dense model (lower is better; fidelity where top-1 is at
chance, as it is for every arm at high ratios of a small VGG), and, at ``ratio``, top-1 after
``finetune_epochs`` of the same schedule for the arms in ``finetune``. ThiNet, its scaling and APoZ
see ``images`` training images sampled by the seed. Unlike §4.1 (one layer at a time) all groups go
at once: the setting the fine-tuned comparison needs, and the harder one for a greedy local choice.

    python -m detprune.bench.fidelity.thinet [--full] [--json]
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import torch

import detprune
from detprune.bench.fidelity.common import Study, params, row
from detprune.plugin.context import PruneContext

QUICK = dict(width=0.125, n_train=2500, n_test=None, epochs=10, lr=0.1, batch=64, ratios=(0.2, 0.5), ratio=0.5,
             images=128, finetune_epochs=2, finetune_lr=0.01, finetune=("thinet", "thinet+lsq", "l1", "random"),
             seeds=3, threads=1)  # fmt: skip
FULL = dict(width=0.125, n_train=None, n_test=None, epochs=30, lr=0.1, batch=64, ratios=(0.2, 0.3, 0.5), ratio=0.5,
            images=256, finetune_epochs=10, finetune_lr=0.01, finetune=("thinet", "thinet+lsq", "l1", "random"),
            seeds=3, threads=None)  # fmt: skip
BASELINES = ("l1", "random", "apoz")


@torch.no_grad()
def _logits(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every test image: top-1 and the logit error from one pass."""
    model.eval()
    out, labels = [], []
    for x, y in loader:
        out.append(model(x).float())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def _arms(dense, graph, ctx: PruneContext, images: int) -> dict[str, torch.nn.Module]:
    """Every arm pruned from the same dense model at ``ctx.ratio`` of every group."""
    hub = detprune.plugins()
    plans = {"thinet": hub.pruner("thinet", images=images, progress=False).plan(dense, graph, ctx)}
    for name in BASELINES:
        options = {"criterion_options": {"images": images, "progress": False}} if name == "apoz" else {}
        plans[name] = hub.pruner("oneshot", criterion=name, **options).plan(dense, graph, ctx)
    arms = {name: graph.apply(dense, plan) for name, plan in plans.items()}
    arms["thinet+lsq"] = graph.apply(dense, plans["thinet"])
    hub.compensator("thinet-lsq", progress=False).compensate(dense, arms["thinet+lsq"], plans["thinet"], ctx)
    return arms


def _before(dense, graph, ctx, cfg, study, ref, labels) -> tuple[list[dict], dict[str, torch.nn.Module]]:
    """Rows before fine-tuning at ``ctx.ratio`` (top-1 and logit error), and the arms."""
    arms = _arms(dense, graph, ctx, cfg["images"])
    size = {name: params(m) for name, m in arms.items()}
    top1, err = {}, {}
    for name, model in arms.items():
        logits, _ = _logits(model, study.test)
        top1[name] = _top1(logits, labels)
        err[name] = float((logits - ref).square().sum() / ref.square().sum())
    at = f"@{ctx.ratio}"
    pairs = [("thinet", b) for b in BASELINES] + [("thinet+lsq", b) for b in BASELINES]
    rows = [row(m, b, f"top1 before fine-tune {at}", top1[m], top1[b], size[m], size[b]) for m, b in pairs]
    rows += [row(m, "l1", f"logit rel. error before fine-tune {at}", err[m], err["l1"], size[m], size["l1"],
                 higher_is_better=False) for m in ("thinet", "thinet+lsq")]  # fmt: skip
    return rows, arms


def run_seed(cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One seed: the dense checkpoint, every arm at every ratio before fine-tuning, the arms at ``ratio``
    after, the paired rows."""
    logging.getLogger("detprune").setLevel(logging.WARNING)
    study = Study(cfg, seed)
    dense = study.fit(study.build(), cfg["epochs"], cfg["lr"])
    graph = study.graph(dense)
    ref, labels = _logits(dense, study.test)
    rows, at_ratio, sizes = [], {}, {}
    for ratio in dict.fromkeys([*cfg["ratios"], cfg["ratio"]]):
        ctx = PruneContext(example_inputs=study.adapter.example_inputs(1), ratio=ratio, adapter=study.adapter,
                           train_loader=study.train, graph=graph, seed=seed, progress=False,
                           options={"images": cfg["images"]})  # fmt: skip
        found, arms = _before(dense, graph, ctx, cfg, study, ref, labels)
        rows += found
        sizes[ratio] = sorted({params(m) for m in arms.values()})
        if ratio == cfg["ratio"]:
            at_ratio = arms
    size = {name: params(m) for name, m in at_ratio.items()}
    after = {name: study.top1(study.fit(at_ratio[name], cfg["finetune_epochs"], cfg["finetune_lr"]))
             for name in cfg["finetune"]}  # fmt: skip
    ft = f"top1 after {cfg['finetune_epochs']} ft ep @{cfg['ratio']}"
    for m in ("thinet", "thinet+lsq"):
        for b in (b for b in BASELINES if b in after and m in after):
            rows.append(row(m, b, ft, after[m], after[b], size[m], size[b]))
    pruned = ", ".join(f"{r} -> {'/'.join(f'{n:,}' for n in ns)}" for r, ns in sizes.items())
    notes = (f"{study.describe()}; dense {cfg['epochs']} ep lr {cfg['lr']} top1 {_top1(ref, labels):.4f} "
             f"({params(dense):,} params); every conv group pruned at once, params per ratio (one number: equal "
             f"in every arm) {pruned}; thinet/lsq/apoz sample {cfg['images']} train images (seed {seed}); "
             f"fine-tune at ratio {cfg['ratio']} {cfg['finetune_epochs']} ep lr {cfg['finetune_lr']}")  # fmt: skip
    return [{**r, "notes": notes} for r in rows]


if __name__ == "__main__":
    from detprune.bench.fidelity.runner import method_main

    sys.exit(method_main("thinet"))

"""MFP's claim: does switching the pruning criterion by a meta-attribute beat soft pruning with any
single criterion it switches among?

The claim (He et al., arXiv 1904.03961 / TNNLS "Filter Pruning by Switching to Neighboring CNNs with
Good Attributes"): re-choosing, at every epoch of soft filter pruning, the criterion whose zeroed
selection moves a meta-attribute (here: the loss on held-out training images) least gives a better
pruned network than SFP/FPGM with one fixed criterion.

Protocol per seed: one dense VGG16-CIFAR (``Study.build`` / ``Study.fit``); from copies of it, soft
pruning for ``soft_epochs`` at ``ratio`` (that fraction of every prunable group zeroed at each epoch
end, SFP §3.2) with

* ``mfp``: the pool ``criteria``, meta batches from the Study's holdout split (training images held
  out of all training, passed as ``PruneContext.holdout_loader``; never the scored test split);
* each single criterion of ``baselines`` alone (``mfp`` with a one-criterion pool = SFP/FPGM with a
  group-aware, exactly-zeroed mask), same schedule, same batch order;

every arm once per ``mask_bn`` mode (on: BN γ, β zeroed with the filters, masked == pruned; off: SFP's
original filter-only mask). Each is hard-pruned by its own plan and scored on every test image
without fine-tuning (SFP's protocol). Soft pruning trains on ``soft_train`` of the training images per
epoch (None: all of them): 15+ epochs must fit the budget, one quick seed ~1 minute on one thread of a
2-core CPU (2 minutes when the machine is shared), a full seed ~11 minutes (estimated from the quick
one, not measured).

    python -m detprune.bench.fidelity.mfp [--full] [--json]
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from detprune.bench.fidelity.common import Study, copy_of, params, row, subset
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.mfp.pruner import DEFAULT_CRITERIA, MFP

QUICK = dict(width=0.125, n_train=2250, n_test=None, holdout=250, epochs=4, lr=0.05, batch=64, soft_epochs=15,
             soft_train=256, soft_lr=0.01, ratio=0.3, criteria=DEFAULT_CRITERIA, baselines=("l2", "cosine"),
             mask_bn=(True, False), meta_batches=2, seeds=3, threads=1)  # fmt: skip
FULL = dict(width=0.125, n_train=None, n_test=None, holdout=500, epochs=20, lr=0.1, batch=64, soft_epochs=20,
            soft_train=1024, soft_lr=0.01, ratio=0.4, criteria=DEFAULT_CRITERIA, baselines=DEFAULT_CRITERIA,
            mask_bn=(True, False), meta_batches=4, seeds=3, threads=None)  # fmt: skip


class _Unsaved(Trainer):
    """A Trainer that writes nothing per epoch: no soft run is resumed, and its plot costs more than a quick epoch."""

    def save(self, best: bool = False) -> None:
        pass


def _tag(mask_bn: bool) -> str:
    return "mask_bn" if mask_bn else "no mask_bn"


def _soft_prune(dense, study: Study, train, criteria, mask_bn: bool, cfg: dict[str, Any]):
    """Soft-prune a copy of ``dense``, then hard-prune it by its plan: ``(pruned model, pruner)``."""
    model = copy_of(dense).train()
    graph = study.graph(model)
    ctx = PruneContext(ratio=cfg["ratio"], adapter=study.adapter, train_loader=train, holdout_loader=study.holdout,
                       graph=graph, seed=study.seed, progress=False)  # fmt: skip
    pruner = MFP(criteria=criteria, mask_bn=mask_bn, meta_batches=cfg["meta_batches"], progress=False).bind(ctx)
    _Unsaved(model, study.adapter, train, None, epochs=cfg["soft_epochs"], out_dir=study.tmp / "soft", pruner=pruner,
             lr=cfg["soft_lr"], warmup_epochs=0, progress=False, seed=study.seed).fit()  # fmt: skip
    model.eval()
    return graph.apply(model, pruner.plan(model, graph, ctx)), pruner


def run_seed(cfg: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    """One seed: the dense model, every (pool, mask_bn) arm soft-pruned and hard-pruned, the paired rows."""
    logging.getLogger("detprune").setLevel(logging.WARNING)
    study = Study(cfg, seed, holdout=cfg["holdout"])
    dense = study.fit(study.build(), cfg["epochs"], cfg["lr"])
    soft_ds = study.train_ds if cfg["soft_train"] is None else subset(study.train_ds, cfg["soft_train"], seed)
    train = make_loader(soft_ds, cfg["batch"], train=True, seed=seed)
    pools = {"mfp": tuple(cfg["criteria"]), **{c: (c,) for c in cfg["baselines"]}}
    top1, size, trace = {}, {}, {}
    for mask_bn in cfg["mask_bn"]:
        for name, pool in pools.items():
            pruned, pruner = _soft_prune(dense, study, train, pool, mask_bn, cfg)
            key = f"{name}({_tag(mask_bn)})"
            top1[key], size[key] = study.top1(pruned), params(pruned)
            if name == "mfp":
                trace[key] = " ".join(c for _, c in pruner.chosen())

    held = len(study.holdout_ds)
    meta_images = min(held, cfg["meta_batches"] * cfg["batch"])
    notes = (f"{study.describe()}; dense {cfg['epochs']} ep top1 {study.top1(dense):.4f} ({params(dense):,} params); "
             f"soft pruning {cfg['soft_epochs']} ep lr {cfg['soft_lr']} on {len(soft_ds)} train images at ratio "
             f"{cfg['ratio']}, hard-pruned, no fine-tune, top1 on all {len(study.test_ds)} test images; mfp pool "
             f"{','.join(cfg['criteria'])}, meta = loss on {cfg['meta_batches']} batches ({meta_images} of the "
             f"{held} holdout images, never test); mfp chose: "
             + "; ".join(f"{k} [{v}]" for k, v in trace.items()))  # fmt: skip
    rows = []
    for mask_bn in cfg["mask_bn"]:
        m = f"mfp({_tag(mask_bn)})"
        metric = f"top1 after soft pruning (mask_bn {'on' if mask_bn else 'off'})"
        for c in cfg["baselines"]:
            b = f"{c}({_tag(mask_bn)})"
            rows.append(row(m, b, metric, top1[m], top1[b], size[m], size[b], notes))
    if len(cfg["mask_bn"]) > 1:  # the exact mask (masked == pruned) vs SFP's filter-only one
        on, off = "mfp(mask_bn)", "mfp(no mask_bn)"
        rows.append(row(on, off, "top1 after soft pruning: mask_bn on vs off", top1[on], top1[off], size[on],
                        size[off], notes))  # fmt: skip
    return rows


if __name__ == "__main__":
    from detprune.bench.fidelity.runner import method_main

    sys.exit(method_main("mfp"))

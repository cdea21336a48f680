"""Fidelity of MFP (He et al., arXiv 1904.03961): does switching the pruning criterion by the
meta-attribute beat soft filter pruning with each single criterion it switches among?

Protocol (the same for every row, side by side): one dense model is trained once; from copies of
it, soft pruning trains for ``soft_epochs`` epochs at ``ratio`` (fraction of channels removed in
every prunable group, zeroed at each epoch end, SFP §3.2), once with ``mfp`` (criteria l1, l2,
minkowski-p1, minkowski-p2, cosine; meta-attribute = held-out loss on 2 batches) and once per single
criterion (``mfp`` with that criterion alone = SFP/FPGM with a group-aware, exactly-zeroed mask). Each
is then hard-pruned by its plan (the physically smaller model equals the masked one) and its top-1 is
measured on the held-out split, without further fine-tuning (SFP's protocol). Same seed, same batch
order, same learning-rate schedule for every run.

Data: VGG-16 (CIFAR variant) on the real CIFAR-10 images in ../shared/data/cifar10-sample when present
(balanced subsets in quick mode, no augmentation), else a synthetic 10-class grating set. ``quick``
shrinks everything to finish in ~3 minutes on a 2-core CPU (one torch thread: on a shared 2-core
machine a second thread costs ~10x in spin-waits); the full run (ResNet-56, the SFP/FPGM CIFAR
setting) belongs on a GPU.

    python -m detprune.bench.fidelity.mfp [--full] [--json]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

import detprune
from detprune.bench.fidelity.data import bench_threads, train_test
from detprune.eval.evaluate import evaluate_classifier
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.mfp.pruner import DEFAULT_CRITERIA, MFP

QUICK = dict(
    model="vgg16-cifar",
    args=dict(width=0.125),
    n_train=2500,
    n_test=1000,
    dense_epochs=8,
    soft_epochs=3,
    ratio=0.4,
    batch=64,
    lr=0.05,
    soft_lr=0.01,
    threads=1,
    mask_bn=True,
)
FULL = dict(
    model="resnet56-cifar",
    args=dict(width=1.0),
    n_train=None,
    n_test=None,
    dense_epochs=60,
    soft_epochs=30,
    ratio=0.4,
    batch=128,
    lr=0.1,
    soft_lr=0.01,
    threads=None,
    mask_bn=True,
)


def _soft_prune(dense_state, adapter, train, test, criteria, cfg, out: Path) -> tuple[float, MFP, dict]:
    model = adapter.build()
    model.load_state_dict(dense_state)
    ctx = PruneContext(
        example_inputs=adapter.example_inputs(1),
        ratio=cfg["ratio"],
        adapter=adapter,
        train_loader=train,
        val_loader=test,
    )
    pruner = MFP(criteria=criteria, mask_bn=cfg["mask_bn"], progress=False).bind(ctx)
    Trainer(
        model,
        adapter,
        train,
        None,
        epochs=cfg["soft_epochs"],
        out_dir=out,
        pruner=pruner,
        lr=cfg["soft_lr"],
        warmup_epochs=0,
        progress=False,
        seed=0,
    ).fit()
    model.eval()
    graph = trace(model, ctx.example_inputs, protected=tuple(adapter.protected(model)))
    plan = pruner.plan(model, graph, ctx)
    pruned = graph.apply(model, plan)
    params = sum(p.numel() for p in pruned.parameters())
    top1 = evaluate_classifier(pruned, test, progress=False)["top1"]
    return top1, pruner, {"params": params, "how": plan.meta["how"]}


def run(quick: bool = True) -> list[dict]:
    """Rows ``{"method": "mfp", "baseline": "sfp-<criterion>", "metric": "top1", ...}``, one per criterion."""
    cfg = QUICK if quick else FULL
    logging.getLogger("detprune").setLevel(logging.WARNING)
    with bench_threads(cfg["threads"]):
        t0 = time.perf_counter()
        train_ds, test_ds, source = train_test(cfg)
        adapter = detprune.plugins().adapter(cfg["model"], **cfg["args"])
        train = make_loader(train_ds, cfg["batch"], train=True, seed=0)
        test = make_loader(test_ds, 256, train=False)
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            dense = adapter.build()
            Trainer(
                dense,
                adapter,
                train,
                None,
                epochs=cfg["dense_epochs"],
                out_dir=Path(tmp) / "dense",
                lr=cfg["lr"],
                progress=False,
                seed=0,
            ).fit()
            dense_top1 = evaluate_classifier(dense, test, progress=False)["top1"]
            state = {k: v.clone() for k, v in dense.state_dict().items()}
            results = {}
            for name in ("mfp", *DEFAULT_CRITERIA):
                criteria = DEFAULT_CRITERIA if name == "mfp" else (name,)
                results[name] = _soft_prune(state, adapter, train, test, criteria, cfg, Path(tmp) / name)
        mfp_top1, mfp, info = results["mfp"]
        trace_ = " ".join(f"e{e + 1}:{c}" for e, c in mfp.chosen())
        common = (
            f"{cfg['model']} {cfg['args']} on {source} ({len(train_ds)} train / {len(test_ds)} test), "
            f"dense {cfg['dense_epochs']} ep top1 {dense_top1:.4f}; soft pruning {cfg['soft_epochs']} ep at "
            f"ratio {cfg['ratio']} (mask_bn={cfg['mask_bn']}), no fine-tune; mfp chose [{trace_}]; "
            f"pruned params {info['params']}; {time.perf_counter() - t0:.0f}s total"
        )
        return [
            {
                "method": "mfp",
                "baseline": f"sfp-{name}",
                "metric": "top1",
                "method_value": round(mfp_top1, 4),
                "baseline_value": round(results[name][0], 4),
                "notes": common,
            }
            for name in DEFAULT_CRITERIA
        ]


if __name__ == "__main__":
    from fidelity import method_main

    sys.exit(method_main("mfp"))

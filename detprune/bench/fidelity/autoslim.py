"""Fidelity of AutoSlim (Yu & Huang, arXiv 1903.11728, §4, Fig. 1 / Table 1): at the same FLOPs,
do the channel numbers found by greedy slimming beat the uniform width multiplier?

Protocol (side by side, the same weights for both): one slimmable supernet is trained with the
sandwich rule and in-place distillation (``autoslim`` through the Trainer's ``train_step``); greedy
slimming scores widths on a held-out part of the *training* images (JiahuiYu holds out 50k training
images for the search) and records the widths at each FLOPs budget. The baseline is the widest
*uniform* width (every layer keeps the same fraction of its channels, in the supernet's first-k
order) whose FLOPs fit the same budget. Both are built physically with ``graph.apply``, their BN
statistics recalibrated on the same training batches, and their top-1 measured on test images;
``full`` also fine-tunes both for a few epochs with the same schedule (the paper retrains, §4).

Data: VGG-16 (CIFAR variant) on the CIFAR-10 images in ../shared/data/cifar10-sample when present
(balanced subsets), else synthetic gratings. ``quick`` is sized for ~3 minutes on a 2-core CPU (one
torch thread) and trains briefly: its numbers are a smoke test of the claim, not a reproduction.

    python -m detprune.bench.fidelity.autoslim [--full] [--json]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

import detprune
from detprune.bench.fidelity.data import CIFAR, Flip, bench_threads, cifar, synthetic
from detprune.eval.evaluate import evaluate_classifier
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.autoslim.flops import FlopModel
from detprune_plugins.autoslim.pruner import AutoSlim
from detprune_plugins.autoslim.score import take_batches
from detprune_plugins.autoslim.slimmable import Slimmable, calibrate_bn

QUICK = dict(
    width=0.125,
    n_train=2560,
    n_search=256,
    n_test=1000,
    epochs=6,
    batch=64,
    lr=0.1,
    budgets=(0.5,),
    score_batches=2,
    calib_batches=4,
    bn="batch",
    finetune_epochs=0,
    threads=1,
)
FULL = dict(
    width=0.5,
    n_train=None,
    n_search=500,
    n_test=None,
    epochs=60,
    batch=128,
    lr=0.1,
    budgets=(0.5, 0.3),
    score_batches=4,
    calib_batches=8,
    bn="calibrate",
    finetune_epochs=10,
    threads=None,
)


def _data(cfg: dict[str, Any]) -> tuple[Dataset, TensorDataset, TensorDataset, str]:
    if CIFAR.is_dir():
        n_search = cfg["n_search"]
        train = cifar("train", cfg["n_train"], skip=n_search // 10)  # the first files of each class are held out
        return train, cifar("train", n_search), cifar("test", cfg["n_test"]), "cifar10-sample"
    return (
        synthetic(cfg["n_train"] or 4500, 1),
        synthetic(cfg["n_search"], 3),
        synthetic(cfg["n_test"] or 2000, 2),
        "synthetic gratings",
    )


def _uniform(slim: Slimmable, flops: FlopModel, budget: float) -> tuple[dict[int, int], float]:
    """The widest uniform width (one kept fraction for every layer) within ``budget``."""
    for pct in range(100, 0, -1):
        cfg = slim.uniform_config(pct / 100)
        frac = flops(slim.keep_raw(cfg)) / flops.dense
        if frac <= budget:
            return cfg, frac
    return slim.min_config(), flops(slim.keep_raw(slim.min_config())) / flops.dense


def run(quick: bool = True) -> list[dict[str, Any]]:
    cfg = QUICK if quick else FULL
    logging.getLogger("detprune").setLevel(logging.ERROR)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    with bench_threads(cfg["threads"]):
        torch.manual_seed(0)
        train_ds, search_ds, test_ds, source = _data(cfg)
        adapter = detprune.plugins().adapter("vgg16-cifar", width=cfg["width"])
        model = adapter.build()
        train = make_loader(Flip(train_ds), cfg["batch"], train=True, seed=0)
        plain = make_loader(train_ds, cfg["batch"], train=True, seed=1)  # BN calibration: no augmentation
        search = make_loader(search_ds, 128, train=False)
        test = make_loader(test_ds, 256, train=False)
        budgets = tuple(cfg["budgets"])
        with tempfile.TemporaryDirectory() as tmp:
            pruner = AutoSlim(
                flops=budgets,
                bn=cfg["bn"],
                score_batches=cfg["score_batches"],
                calib_batches=cfg["calib_batches"],
                state=str(Path(tmp) / "search.json"),
                progress=False,
            )
            Trainer(
                model,
                adapter,
                train,
                None,
                epochs=cfg["epochs"],
                out_dir=Path(tmp) / "supernet",
                pruner=pruner,
                lr=cfg["lr"],
                warmup_epochs=0.5,
                progress=False,
                device=device,
            ).fit()
            inputs = tuple(t.to(device) for t in adapter.example_inputs(1))
            graph = trace(model, inputs, protected=adapter.protected(model))
            slim, flops = Slimmable(model, graph), FlopModel(model, graph, inputs)
            calib = [b[0].to(device) for b in take_batches(plain, cfg["calib_batches"], seed=1)]
            rows = []
            for budget in budgets:
                ctx = PruneContext(
                    example_inputs=inputs,
                    adapter=adapter,
                    train_loader=plain,
                    val_loader=search,
                    device=torch.device(device),
                    options={"select": budget},
                )
                plan = pruner.plan(model, graph, ctx)  # the first call searches, later ones resume the done search
                found = graph.apply(model, plan)
                ucfg, ufrac = _uniform(slim, flops, budget)
                uniform = graph.apply(model, slim.plan_of(ucfg))
                calibrate_bn(uniform, calib)
                values = [evaluate_classifier(m, test, progress=False)["top1"] for m in (found, uniform)]
                note = ""
                if cfg["finetune_epochs"]:
                    tuned = []
                    for name, m in (("autoslim", found), ("uniform", uniform)):
                        Trainer(
                            m,
                            adapter,
                            train,
                            None,
                            epochs=cfg["finetune_epochs"],
                            lr=cfg["lr"] / 10,
                            out_dir=Path(tmp) / f"ft-{name}-{budget}",
                            progress=False,
                            device=device,
                        ).fit()
                        tuned.append(evaluate_classifier(m, test, progress=False)["top1"])
                    note = (
                        f"; after {cfg['finetune_epochs']} fine-tune epochs: "
                        f"autoslim {tuned[0]:.4f}, uniform {tuned[1]:.4f}"
                    )
                rows.append(
                    {
                        "method": "autoslim",
                        "baseline": "uniform width",
                        "metric": f"top1 @ {budget:g} FLOPs (supernet weights, BN recalibrated)",
                        "method_value": round(values[0], 4),
                        "baseline_value": round(values[1], 4),
                        "notes": (
                            f"vgg16-cifar width {cfg['width']}, {source}, {len(train_ds)} train / {len(search_ds)} "
                            f"search / {len(test_ds)} test images, {cfg['epochs']} sandwich epochs; FLOPs kept "
                            f"autoslim {plan.meta['flops_fraction']:.3f}, uniform {ufrac:.3f} "
                            f"(uniform keeps {_uniform_pct(slim, ucfg)}% of the channels); "
                            f"{plan.meta['search_steps']} greedy steps, bn={cfg['bn']}{note}; "
                            f"{time.perf_counter() - t0:.0f}s"
                        ),
                    }
                )
        return rows


def _uniform_pct(slim: Slimmable, cfg: dict[int, int]) -> int:
    kept = sum(slim.levels[u][cfg[u] - 1] for u in slim.units)
    total = sum(slim.levels[u][-1] for u in slim.units)
    return round(100 * kept / total)


if __name__ == "__main__":
    from fidelity import method_main

    sys.exit(method_main("autoslim"))

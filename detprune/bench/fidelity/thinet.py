"""Fidelity of ThiNet (Luo et al., ICCV 2017): does choosing channels by how well the *next* layer's
output is reconstructed beat the filter-L1 criterion at the same ratio, before fine-tuning?

The paper's claim (§4.1, different filter selection criteria): at the same compression, ThiNet's
data-driven choice loses less accuracy than weight-magnitude criteria before any fine-tuning, and
its least-squares scaling (§3.2) recovers more. Side by side from one trained dense VGG-16 (CIFAR
variant), two protocols: (a) as §4.1, one conv group at a time loses ``single_ratio`` of its
channels (13 runs, averaged); (b) every conv group loses ``all_ratio`` at once. Channels go by

* ``l1``: filter L1 norm (Li et al. 2017), one shot - the baseline;
* ``thinet``: ThiNet's greedy selection on the dense model (one shot, no scaling);
* ``thinet+lsq``: the same plan, then the ``thinet-lsq`` compensator (§3.2 scaling);
* ``thinet-layerwise``: §3.1's layer-by-layer strategy (input side first, each layer judged on the
  network as pruned so far, LSQ scaling; no fine-tuning, so it stays comparable);

((a) uses the first three), and top-1 on the held-out split is measured with no fine-tuning. A second metric, the
relative squared error of the logits against the dense model (lower is better), shows fidelity where top-1
is near chance. All methods see the same sampled images (``images`` x 10 locations, seed 0).

Data: the real CIFAR-10 images in ../shared/data/cifar10-sample when present (balanced subsets in
quick mode, no augmentation), else 10 classes of synthetic colour gratings. ``quick`` finishes in
about 3 minutes on a shared 2-core CPU (one torch thread); the full run (width 1, all images, 60
epochs) belongs on a GPU.

    python -m detprune.bench.fidelity.thinet [--full] [--json]
"""

from __future__ import annotations

import copy
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import detprune
from detprune.bench.fidelity.data import bench_threads, train_test
from detprune.eval.evaluate import evaluate_classifier
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer

QUICK = dict(
    args=dict(width=0.25),
    n_train=2500,
    n_test=1000,
    epochs=10,
    batch=64,
    lr=0.05,
    images=256,
    single_ratio=0.5,
    all_ratio=0.3,
    threads=1,
)
FULL = dict(
    args=dict(width=1.0),
    n_train=None,
    n_test=None,
    epochs=60,
    batch=128,
    lr=0.1,
    images=1000,
    single_ratio=0.5,
    all_ratio=0.3,
    threads=None,
)
METHODS = ("thinet", "thinet+lsq", "thinet-layerwise")


@torch.no_grad()
def _logits(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of the whole loader (top-1 and the logit error come from one pass)."""
    dev = next(model.parameters()).device
    model.eval()
    out, labels = [], []
    for x, y in loader:
        out.append(model(x.to(dev)).float().cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def _plans(dense, graph, ctx) -> dict[str, Any]:
    """The L1 and ThiNet (one-shot) plans of every conv group at ``ctx.ratio``."""
    l1 = detprune.plugins().pruner("oneshot", criterion="l1").plan(dense, graph, ctx)
    thinet = detprune.plugins().pruner("thinet", images=ctx.options["images"], progress=False).plan(dense, graph, ctx)
    return {"l1": l1, "thinet": thinet}


def _score(model, test, ref: torch.Tensor) -> tuple[float, float]:
    """(top-1, relative squared logit error against the dense model's logits ``ref``)."""
    logits, labels = _logits(model, test)
    return float((logits.argmax(1) == labels).float().mean()), float((logits - ref).square().sum() / ref.square().sum())


def _single_layers(dense, graph, ctx, test, ref) -> dict[str, list[tuple[float, float]]]:
    """ThiNet §4.1: prune one group at a time, no fine-tuning; per method, one score per group."""
    plans = _plans(dense, graph, ctx)
    lsq = detprune.plugins().compensator("thinet-lsq", progress=False)
    out: dict[str, list[tuple[float, float]]] = {"l1": [], "thinet": [], "thinet+lsq": []}
    for g in graph.prunable_groups():
        for name, full in plans.items():
            plan = PruningPlan({g.id: full.kept[g.id]}, meta=dict(full.meta))
            pruned = graph.apply(dense, plan)
            out[name].append(_score(pruned, test, ref))
            if name == "thinet":
                lsq.compensate(dense, pruned, plan, ctx)
                out["thinet+lsq"].append(_score(pruned, test, ref))
    return out


def _all_layers(dense, graph, ctx, test, ref) -> dict[str, tuple[float, float]]:
    """Every group pruned at once; layer-by-layer ThiNet (§3.1) on a copy, no fine-tuning."""
    plans = _plans(dense, graph, ctx)
    out = {name: _score(graph.apply(dense, plan), test, ref) for name, plan in plans.items()}
    pruned = graph.apply(dense, plans["thinet"])
    detprune.plugins().compensator("thinet-lsq", progress=False).compensate(dense, pruned, plans["thinet"], ctx)
    out["thinet+lsq"] = _score(pruned, test, ref)
    model = copy.deepcopy(dense)
    plan = (
        detprune.plugins()
        .pruner("thinet", images=ctx.options["images"], mode="layerwise", progress=False)
        .plan(model, graph, ctx)
    )
    out["thinet-layerwise"] = _score(graph.apply(model, plan), test, ref)
    return out


def _rows(method: str, metric: str, m: tuple[float, float], b: tuple[float, float], notes: str) -> list[dict]:
    return [
        {
            "method": method,
            "baseline": "l1",
            "metric": f"top1 {metric}",
            "method_value": round(m[0], 4),
            "baseline_value": round(b[0], 4),
            "notes": notes,
        },
        {
            "method": method,
            "baseline": "l1",
            "metric": f"logit_rel_err {metric} (lower=better)",
            "method_value": round(m[1], 4),
            "baseline_value": round(b[1], 4),
            "notes": notes,
        },
    ]


def run(quick: bool = True) -> list[dict]:
    """Rows ``{"method", "baseline": "l1", "metric", "method_value", "baseline_value", "notes"}``."""
    cfg = QUICK if quick else FULL
    logging.getLogger("detprune").setLevel(logging.WARNING)
    with bench_threads(cfg["threads"]):
        t0 = time.perf_counter()
        train_ds, test_ds, source = train_test(cfg)
        adapter = detprune.plugins().adapter("vgg16-cifar", **cfg["args"])
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
                epochs=cfg["epochs"],
                out_dir=Path(tmp) / "dense",
                lr=cfg["lr"],
                progress=False,
                seed=0,
            ).fit()
        dense.eval()
        ref = _logits(dense, test)[0]
        dense_top1 = evaluate_classifier(dense, test, progress=False)["top1"]
        t_train = time.perf_counter() - t0
        graph = trace(dense, adapter.example_inputs(1), protected=tuple(adapter.protected(dense)))

        def ctx(ratio: float) -> PruneContext:
            return PruneContext(
                example_inputs=adapter.example_inputs(1),
                ratio=ratio,
                adapter=adapter,
                train_loader=train,
                graph=graph,
                options={"images": cfg["images"]},
            )

        single = _single_layers(dense, graph, ctx(cfg["single_ratio"]), test, ref)
        whole = _all_layers(dense, graph, ctx(cfg["all_ratio"]), test, ref)
        mean = {k: tuple(sum(v[i] for v in vals) / len(vals) for i in (0, 1)) for k, vals in single.items()}
        wins = sum(t[0] >= b[0] for t, b in zip(single["thinet"], single["l1"]))
        common = (
            f"vgg16-cifar {cfg['args']} on {source} ({len(train_ds)} train / {len(test_ds)} test), dense "
            f"{cfg['epochs']} ep top1 {dense_top1:.4f}; no fine-tune; thinet samples {cfg['images']} train "
            f"images x 10 locations, seed 0; single layer: thinet top1 >= l1 on {wins}/{len(single['l1'])} groups; "
            f"data + dense training {t_train:.0f}s"
        )
        rows = []
        for method in ("thinet", "thinet+lsq"):
            rows += _rows(
                method,
                f"one layer at a time @{cfg['single_ratio']} (mean of {len(single['l1'])})",
                mean[method],
                mean["l1"],
                common,
            )
        for method in METHODS:
            rows += _rows(method, f"all layers @{cfg['all_ratio']}", whole[method], whole["l1"], common)
        for r in rows:
            r["notes"] += f"; {time.perf_counter() - t0:.0f}s total"
        return rows


if __name__ == "__main__":
    from fidelity import method_main

    sys.exit(method_main("thinet"))

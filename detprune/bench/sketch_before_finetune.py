"""Accuracy right after pruning, before any fine-tuning: plain selection vs the ``sketch``
compensator's readings, on VGG16-CIFAR trained with Network Slimming's sparsity term.

Protocol (the seed paper's, scaled down to a CPU): train VGG16-CIFAR (``--width``) on the real
CIFAR-10 images of ``../shared/data/cifar10-sample`` with the ``slimming`` pruner's ``s*sign(gamma)``
term, prune at each ``--ratios`` (``slimming``: one global |gamma| threshold; ``l1``: the
``oneshot`` pruner, L1 filter norms, the same ratio in every layer), and score the pruned model on
``--eval-images`` test images as it comes out of surgery (``selection``) and after the sketch
compensator at each ``--alphas`` in four configurations:

* ``rebase/fold``   - the precise reading (research/algorithms.md 6.4) with BN folded;
* ``rebase/reinit`` - the literal FilterSketch-like reading: BN re-initialised + AdaBN;
* ``procr/keep``    - channel identities kept (Procrustes), BN kept;
* ``procr/fold``    - Procrustes with BN folded.

BN statistics come from ``--calib-batches`` training batches, two ways: ``new`` (only the new
channels' BNs, the compensator's default) and ``all`` (AdaBN on every BN afterwards, the same
recalibration the ``selection`` row gets there), so that sketching is not credited with what BN
recalibration alone does. The trained dense weights are cached under ``--cache``.

    detprune bench sketch-before-finetune --epochs 10 --ratios 0.5 0.7
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

import detprune
from detprune.bench.paths import shared_data
from detprune.data import build_dataset, load_card
from detprune.eval.evaluate import evaluate_classifier
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.sketch.bn import adabn

CONFIGS = {
    "rebase/fold": dict(variant="rebase", bn="fold"),
    "rebase/reinit": dict(variant="rebase", bn="reinit"),
    "procr/keep": dict(variant="procrustes", bn="keep"),
    "procr/fold": dict(variant="procrustes", bn="fold"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="detprune bench sketch-before-finetune", description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(shared_data("cifar10-sample")))
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--s", type=float, default=1e-4, help="Network Slimming sparsity strength")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument(
        "--pruners",
        nargs="+",
        default=["slimming", "l1"],
        help="slimming: global |gamma| threshold; l1: oneshot L1 filter norms, same ratio per layer",
    )
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.2, 0.3, 0.5])
    ap.add_argument("--mode", default="fd")
    ap.add_argument("--calib-batches", type=int, default=20)
    ap.add_argument("--eval-images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cache", default="/tmp/detprune-sketch-bench")
    ap.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="also fine-tune selection and each configuration (AdaBN on every BN) this many epochs",
    )
    ap.add_argument("--finetune-alpha", type=float, default=0.3)
    ap.add_argument("--finetune-pruners", nargs="+", default=["slimming"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    hub = detprune.plugins()
    adapter = hub.adapter("vgg16-cifar", width=args.width)
    card = load_card(args.data)
    train_ds = build_dataset(card, split="train", train=True)
    test_ds = build_dataset(card, split="test")
    step = max(1, len(test_ds) // args.eval_images)
    test_ds = Subset(test_ds, list(range(0, len(test_ds), step))[: args.eval_images])
    train_loader = make_loader(train_ds, args.batch_size, train=True, seed=0)
    test_loader = torch.utils.data.DataLoader(test_ds, batch_size=256)

    model = adapter.build()
    cache = Path(args.cache)
    weights = cache / f"vgg16-w{args.width}-e{args.epochs}-s{args.s}.pt"
    slimming = hub.pruner("slimming", s=args.s)
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        t0 = time.perf_counter()
        run = cache / f"train-{int(time.time())}"
        Trainer(
            model,
            adapter,
            train_loader,
            test_loader,
            epochs=args.epochs,
            out_dir=run,
            pruner=slimming,
            lr=0.05,
            device="cpu",
        ).fit()
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s -> {weights}")
    model.eval()
    graph = trace(model, adapter.example_inputs(1), protected=adapter.protected(model))
    dense = evaluate_classifier(model, test_loader, progress=False)["top1"]
    rows = []

    def score(m) -> float:
        return evaluate_classifier(m, test_loader, progress=False)["top1"]

    for pruner_name, ratio in [(p, r) for p in args.pruners for r in args.ratios]:
        pruner = slimming if pruner_name == "slimming" else hub.pruner("oneshot", criterion=pruner_name)
        plan = pruner.plan(model, graph, PruneContext(ratio=ratio))
        selected = graph.apply(model, plan)
        base = {"pruner": pruner_name, "ratio": ratio, "params": sum(p.numel() for p in selected.parameters())}
        row = dict(base, alpha=None, config="selection", rebased="-", new=score(selected))
        adabn(selected, train_loader, args.calib_batches)
        rows.append(dict(row, all=score(selected)))
        for alpha in args.alphas:
            for label, opts in CONFIGS.items():
                row = dict(base, alpha=alpha, config=label)
                for recal in ("new", "all"):
                    pruned = graph.apply(model, plan)
                    comp = hub.compensator(
                        "sketch",
                        alpha=alpha,
                        mode=args.mode,
                        calib_batches=args.calib_batches,
                        recalibrate=recal,
                        **opts,
                    )
                    t0 = time.perf_counter()
                    comp.compensate(model, pruned, plan, PruneContext(graph=graph, train_loader=train_loader))
                    row[recal + "_s"] = time.perf_counter() - t0
                    row[recal] = score(pruned)
                    row["rebased"] = f"{len(comp.report['rebased'])}/{len(comp.report['groups'])}"
                rows.append(row)
    tuned = (
        finetune(args, hub, model, graph, slimming, train_loader, test_loader, adapter, score)
        if args.finetune_epochs
        else []
    )
    if args.json:
        print(json.dumps({"dense_top1": dense, "rows": rows, "finetuned": tuned}))
        return
    print(
        f"VGG16-CIFAR width {args.width}, {args.epochs} epochs NS (s={args.s}); dense top-1 {dense:.4f} "
        f"on {len(test_ds)} test images; sketch mode {args.mode}; BN statistics from {args.calib_batches} "
        f"training batches: 'new' = only the new channels', 'all' = AdaBN on every BN"
    )
    head = ["pruner", "ratio", "params", "alpha", "rebased", "config", "top1 new", "top1 all"]
    print(" | ".join(f"{h:>13}" for h in head))
    for r in rows:
        cells = [
            r["pruner"],
            f"{r['ratio']:.2f}",
            f"{r['params']:,}",
            "-" if r["alpha"] is None else f"{r['alpha']:.2f}",
            r["rebased"],
            r["config"],
            f"{r['new']:.4f}",
            f"{r['all']:.4f}",
        ]
        print(" | ".join(f"{c:>13}" for c in cells))

    if tuned:
        print(
            f"\nafter {args.finetune_epochs} fine-tuning epochs (lr 0.01, cosine), alpha {args.finetune_alpha}, "
            f"AdaBN on every BN before fine-tuning"
        )
        print(" | ".join(f"{h:>13}" for h in ("pruner", "ratio", "config", "before", "after")))
        for r in tuned:
            print(
                " | ".join(
                    f"{c:>13}"
                    for c in (r["pruner"], f"{r['ratio']:.2f}", r["config"], f"{r['before']:.4f}", f"{r['after']:.4f}")
                )
            )


def finetune(args, hub, model, graph, slimming, train_loader, test_loader, adapter, score) -> list[dict]:
    """The same pruned starting points, fine-tuned with the same budget (the paper's claim is after it)."""
    out = []
    for pruner_name, ratio in [(p, r) for p in args.finetune_pruners for r in args.ratios]:
        pruner = slimming if pruner_name == "slimming" else hub.pruner("oneshot", criterion=pruner_name)
        plan = pruner.plan(model, graph, PruneContext(ratio=ratio))
        for label in ("selection", *CONFIGS):
            pruned = graph.apply(model, plan)
            if label == "selection":
                adabn(pruned, train_loader, args.calib_batches)
            else:
                comp = hub.compensator(
                    "sketch",
                    alpha=args.finetune_alpha,
                    mode=args.mode,
                    calib_batches=args.calib_batches,
                    recalibrate="all",
                    **CONFIGS[label],
                )
                comp.compensate(model, pruned, plan, PruneContext(graph=graph, train_loader=train_loader))
            before = score(pruned)
            run = Path(args.cache) / f"ft-{pruner_name}-{ratio}-{label.replace('/', '-')}-{int(time.time())}"
            Trainer(
                pruned,
                adapter,
                train_loader,
                None,
                epochs=args.finetune_epochs,
                out_dir=run,
                lr=0.01,
                warmup_epochs=0,
                device="cpu",
                progress=False,
            ).fit()
            out.append(
                {"pruner": pruner_name, "ratio": ratio, "config": label, "before": before, "after": score(pruned)}
            )
    return out


if __name__ == "__main__":
    main()

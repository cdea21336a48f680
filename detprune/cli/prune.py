"""``detprune prune``: the whole trip for one model (detprune.pipeline.trip): train or load, prune,
compensate, fine-tune, evaluate, measure, save and report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from detprune.cli._values import (
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    unit_float,
)
from detprune.plugin.options import parse_options

EPILOG = """\
examples:
  detprune prune --model vgg16-cifar --data datasets/cifar10.yaml --weights vgg.pt --pruner oneshot \\
      --criterion l1 --ratio 0.5 --finetune-epochs 20 --out runs/vgg-l1
  detprune prune --model yolov3 --data datasets/visdrone.yaml --weights y3.pt --pruner slimming \\
      --sparsity 1e-4 --sparsity-epochs 30 --ratio 0.5 --shortcut sketch --compensator sketch --alpha 0.3 \\
      --finetune-epochs 30 --out runs/y3-ns-sketch
  detprune prune --model yolov3 --width 0.25 --img-size 320 --epochs-dense 10 --ratio 0.3 --out runs/quick
      (no --data: the embedded synthetic VisDrone-format set; no --weights: trained here first)
  detprune prune ... --weights runs/y3-ns-sketch/pruned.pt --out runs/pass2   (prune a pruned model again)

The run folder gets pruned.pt (recipe + weights: `detprune eval --model M --weights DIR/pruned.pt`,
`detprune.load`), report.json and report.md (dense vs pruned: params, FLOPs (2·MAC), latency (median,
batch 1), mAP@0.5 or top-1, per-layer widths, the plan, what each compensator did), widths.png (and the
pruner's own plots, e.g. γ histograms), and train/<phase>/ run folders (metrics.csv, last.pt).
Method options: each plugin documents its own, with the flag that sets them:
  detprune plugins slimming        (s <- --sparsity, shortcut <- --shortcut, ...)
  detprune plugins sketch          (alpha <- --alpha; mode, variant, bn ... <- --compensator-opt KEY=VALUE)
Every other option goes through --pruner-opt / --compensator-opt / --model-arg KEY=VALUE, where
VALUE is JSON when it parses (3, 1e-4, true, [0.3, 0.5], {"a": 1}) and text otherwise.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model end to end: train/load, prune, compensate, fine-tune, report",
        description="Structured pruning end to end (../shared/DESIGN.md): optional dense training, the "
        "pruner's training phase (e.g. Network Slimming's sparsity), the plan, surgery, compensators, "
        "fine-tuning, evaluation and measurement of dense and pruned models, a loadable pruned.pt "
        "and a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="model adapter name (see `detprune plugins --kind adapter`)")
    g.add_argument("--data", help="dataset card (.yaml) or folder (default: the embedded synthetic drone set)")
    g.add_argument("--weights", help="start from: a state_dict, a trainer checkpoint, or a pruned recipe (pruned.pt)")
    g.add_argument(
        "--epochs-dense",
        type=nonnegative_int,
        default=0,
        metavar="E0",
        help="without --weights: train the dense model for E0 epochs first (default 0: prune as built)",
    )
    g.add_argument(
        "--img-size", type=positive_int, help="network input size (default: the one --weights records, else the card's)"
    )
    g.add_argument("--width", type=positive_float, help="channel width multiplier of the dense model")
    g.add_argument(
        "--depth", type=positive_float, help="depth multiplier (residual blocks per stage) of the dense model"
    )
    g.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another adapter build argument, e.g. depth=0.34 (repeatable)",
    )
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val", help="split that every metric is measured on")
    g = p.add_argument_group("pruning")
    g.add_argument("--pruner", default="oneshot", help="pruner name (default oneshot: one criterion, one cut)")
    g.add_argument("--ratio", type=unit_float, default=0.5, help="fraction of channels removed (default 0.5)")
    g.add_argument("--criterion", help="channel criterion for pruners that take one (default l1)")
    g.add_argument(
        "--sparsity",
        type=nonnegative_float,
        metavar="S",
        help="Network Slimming's L1 weight s on BN γ (pruner option s)",
    )
    g.add_argument(
        "--sparsity-epochs",
        type=nonnegative_int,
        default=0,
        metavar="E",
        help="epochs of sparsity training with the pruner's callbacks before planning",
    )
    g.add_argument(
        "--prune-epochs",
        type=nonnegative_int,
        default=0,
        metavar="E",
        help="the same training phase under its generic name (MFP's soft pruning ...)",
    )
    g.add_argument("--shortcut", help="residual groups: shared | union | sketch (pruner option)")
    g.add_argument("--shortcut-width", help="common width of a residual group under --shortcut sketch: min | mean")
    g.add_argument("--min-keep", type=unit_float, help="per-layer floor, fraction of channels kept (slimming: 0.1)")
    g.add_argument("--round-to", type=positive_int, help="keep channel counts at multiples of N")
    g.add_argument("--global-ranking", action="store_true", help="one ranking over all groups (oneshot)")
    g.add_argument(
        "--compensator",
        action="append",
        default=[],
        metavar="NAME",
        help="compensator to run after surgery; repeat to chain in order (fold-beta, sketch)",
    )
    g.add_argument(
        "--alpha", type=unit_float, help="sketch: compensate layers whose prune ratio exceeds alpha (in [0, 1))"
    )
    g.add_argument("--pruner-opt", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--compensator-opt", action="append", default=[], metavar="KEY=VALUE")
    g = p.add_argument_group("training")
    g.add_argument(
        "--finetune-epochs", type=nonnegative_int, default=0, metavar="F", help="fine-tune the pruned model F epochs"
    )
    g.add_argument("--batch-size", type=positive_int, default=16)
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    g.add_argument("--lr", type=positive_float, help="peak learning rate (default 0.01 sgd, 0.001 adamw)")
    g.add_argument("--finetune-lr", type=positive_float, help="fine-tuning learning rate (default: --lr)")
    g.add_argument("--weight-decay", type=nonnegative_float)
    g.add_argument("--warmup-epochs", type=nonnegative_float, default=1.0)
    g.add_argument("--amp", action="store_true", help="mixed precision training")
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="run folder (refuses one holding a run unless --overwrite)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what an earlier prune run wrote in --out (listed in "
        "its .detprune-run.json; nothing else), once the new run has succeeded",
    )
    g.add_argument("--latency-iters", type=positive_int, default=30, help="timed forward passes per model (default 30)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--json", action="store_true", help="print report.json on stdout")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from detprune.pipeline.trip import PipelineConfig

    return PipelineConfig(
        model=args.model,
        out=args.out,
        data=args.data,
        weights=args.weights,
        pruner=args.pruner,
        ratio=args.ratio,
        criterion=args.criterion,
        sparsity=args.sparsity,
        sparsity_epochs=args.sparsity_epochs,
        prune_epochs=args.prune_epochs,
        compensators=list(args.compensator),
        alpha=args.alpha,
        shortcut=args.shortcut,
        shortcut_width=args.shortcut_width,
        min_keep=args.min_keep,
        round_to=args.round_to,
        global_ranking=args.global_ranking,
        finetune_epochs=args.finetune_epochs,
        epochs_dense=args.epochs_dense,
        img_size=args.img_size,
        width=args.width,
        model_args={
            **parse_options(args.model_arg, "--model-arg"),
            **({"depth": args.depth} if args.depth is not None else {}),
        },
        batch_size=args.batch_size,
        device=args.device,
        lr=args.lr,
        finetune_lr=args.finetune_lr,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        amp=args.amp,
        workers=args.workers,
        seed=args.seed,
        train_split=args.train_split,
        val_split=args.val_split,
        pruner_options=parse_options(args.pruner_opt, "--pruner-opt"),
        compensator_options=parse_options(args.compensator_opt, "--compensator-opt"),
        latency_iters=args.latency_iters,
        plots=not args.no_plots,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )


def run(args: argparse.Namespace) -> int:
    from detprune.pipeline.trip import run as run_pipeline

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    result = run_pipeline(config_from_args(args))
    if args.json:
        print(json.dumps(result.report, indent=2))
    else:
        print(summary(result.report))
        print(f"wrote {', '.join(str(p) for p in result.files.values())}")
    return 0


def summary(r: dict[str, Any]) -> str:
    """Dense vs pruned in a few lines."""
    metric = r["metric"]
    rows = [("dense", r["dense"]), ("pruned", r["pruned"])]
    lines = [f"{'model':<8} {'params':>12} {'FLOPs':>14} {'latency ms':>11} {metric:>8}"]
    for name, s in rows:
        value = s["metrics"].get(metric)
        lines.append(
            f"{name:<8} {s['params']:>12,} {s['flops']:>14,} {s['latency_ms']:>11.2f} "
            f"{'-' if value is None else f'{value:.4f}':>8}"
        )
    k = r["kept"]
    lines.append(
        f"kept: params {k['params']:.1%}, FLOPs {k['flops']:.1%}, latency {k['latency_ms']:.1%}; "
        f"achieved channel ratio {r['plan']['achieved_ratio']:.3f} (asked {r['ratio']})"
    )
    return "\n".join(lines)

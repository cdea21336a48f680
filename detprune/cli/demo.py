"""``detprune demo``: the seed paper's comparison on a CPU in minutes.

On the embedded synthetic VisDrone-format set it trains a small YOLOv3 with Network Slimming's
sparsity term from scratch (Liu et al. 2017, §3.3: "we train with channel sparsity regularization
from scratch"), caches it, then prunes it twice at the same channel ratio with the same fine-tuning
budget: Network Slimming alone (residual streams pruned as one shared group) and Network Slimming
+ Matrix-Sketching compensation (each residual producer keeps its own width, the stream is sketched
to the common one; layers pruned above alpha are compensated). One table: dense / NS / NS+sketch,
with params, FLOPs (2·MAC), latency (median, batch 1, measured side by side) and mAP@0.5 on the
held-out val split.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from detprune.errors import DetpruneError

EPILOG = """\
examples:
  detprune demo                 the full demo (under 15 minutes on a 2-core CPU; faster on a GPU)
  detprune demo --json          the table as one JSON object: {"rows": [{name, params, flops, latency_ms, map50}]}
  detprune demo --quick         a one-minute smoke run (tiny model and budget: mAP near zero)

The sparsity-trained dense model is cached under $DETPRUNE_CACHE/demo (default ~/.cache/detprune);
a second run reuses it (--retrain trains it again). Each arm's run folder (report.md, pruned.pt,
widths.png) is under --out.
"""


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes the demo; its hash names the cached dense model.

    Chosen by measurement on a 2-core CPU: a width-0.125, depth-0.34 YOLOv3 (0.60M params, 0.40 GFLOPs
    at 320) trains at ~45 images/s; 20 plain AdamW epochs reached 0.28 held-out mAP@0.5, 24 sparsity
    epochs 0.36-0.42. AdamW divides the L1 sub-gradient by the gradient's scale, so the paper's
    s = 1e-4 (and 1e-3) left the |γ| median at 0.91+ after 24 epochs; s = 1e-2 moves it to ~0.42.
    """

    width: float = 0.125
    depth: float = 0.34
    img_size: int = 320
    dense_epochs: int = 32
    sparsity: float = 1e-2
    ratio: float = 0.5
    finetune_epochs: int = 5
    alpha: float = 0.3
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    finetune_lr: float = 1e-3
    train_limit: int | None = None
    val_limit: int | None = None
    latency_rounds: int = 5
    latency_iters: int = 10
    seed: int = 0

    def key(self) -> str:
        keep = {k: v for k, v in asdict(self).items() if k not in ("ratio", "finetune_epochs", "alpha", "finetune_lr",
                                                                    "val_limit", "latency_rounds", "latency_iters")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


FULL = DemoConfig()
QUICK = DemoConfig(width=0.0625, depth=0.34, img_size=128, dense_epochs=1, finetune_epochs=1, batch_size=8,
                   train_limit=32, val_limit=16, latency_rounds=2, latency_iters=3)

ARMS = (  # (row name, run folder, pipeline settings)
    ("NS", "ns", {"shortcut": "shared", "compensators": []}),
    ("NS+sketch", "ns-sketch", {"shortcut": "sketch", "compensators": ["sketch"]}),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main demo: dense vs Network Slimming vs NS + sketch on a small YOLOv3",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    p.add_argument("--quick", action="store_true", help="tiny model and budget: a smoke run, not a result")
    p.add_argument("--out", default="detprune-demo", help="folder for the two arms' run folders (default ./detprune-demo)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--retrain", action="store_true", help="train the dense model again instead of using the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = QUICK if args.quick else FULL
    result = run_demo(cfg, out=Path(args.out), device=args.device, retrain=args.retrain,
                      progress=not args.no_progress, quick=args.quick)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def run_demo(cfg: DemoConfig, out: Path, device: str | None = None, retrain: bool = False, progress: bool = True,
             quick: bool = False, cache: Path | None = None) -> dict[str, Any]:
    """Train (or reuse) the dense model, run both arms, measure latency side by side; the result dict."""
    from detprune.data import default_card
    from detprune.pipeline.trip import PipelineConfig
    from detprune.pipeline.trip import run as run_pipeline

    _require_plugins()
    t0 = time.perf_counter()
    card = default_card(cache)
    anchors = demo_anchors(card, cfg.img_size)
    model_args = {"depth": cfg.depth, "anchors": anchors}
    dense_path, reused = dense_model(cfg, card, model_args, device, retrain, progress, cache)
    base = PipelineConfig(model="yolov3", out=out, data=card if cache is not None else None,
                          weights=dense_path, pruner="slimming", ratio=cfg.ratio, img_size=cfg.img_size,
                          width=cfg.width, model_args=model_args, finetune_epochs=cfg.finetune_epochs,
                          batch_size=cfg.batch_size, device=device, optimizer=cfg.optimizer, lr=cfg.lr,
                          finetune_lr=cfg.finetune_lr, seed=cfg.seed, train_limit=cfg.train_limit,
                          val_limit=cfg.val_limit, latency_iters=cfg.latency_iters, iou_range=False,
                          progress=progress, overwrite=True)
    reports, models = {}, {}
    for name, folder, settings in ARMS:
        extra = {"alpha": cfg.alpha} if settings["compensators"] else {}
        res = run_pipeline(replace(base, out=out / folder, **settings, **extra))
        reports[name], models[name] = res.report, res.model
        models.setdefault("dense", res.dense)
    latency = side_by_side_latency(models, res.graph.example_inputs, cfg.latency_rounds, cfg.latency_iters)
    first = reports[ARMS[0][0]]
    rows = [_row("dense", first["dense"], latency["dense"])]
    rows += [_row(name, reports[name]["pruned"], latency[name]) for name, _, _ in ARMS]
    for name, _, _ in ARMS:
        rows[[r["name"] for r in rows].index(name)]["map50_before_finetune"] = (
            (reports[name].get("before_finetune") or {}).get("map50"))
    return {"rows": rows, "quick": quick, "config": asdict(cfg), "dense_model": str(dense_path),
            "dense_model_reused": reused, "device": first["device"], "data": first["data"],
            "runs": {name: str(out / folder) for name, folder, _ in ARMS},
            "seconds": round(time.perf_counter() - t0, 1)}


def _require_plugins() -> None:
    import detprune

    host = detprune.plugins()
    missing = [f"{kind} '{name}'" for kind, name in (("pruner", "slimming"), ("compensator", "sketch"))
               if name not in host.names(kind)]
    if missing:
        raise DetpruneError(f"the demo needs {' and '.join(missing)}; `detprune plugins` lists what is installed")


def _row(name: str, stats: dict[str, Any], latency_ms: float) -> dict[str, Any]:
    return {"name": name, "params": stats["params"], "flops": stats["flops"], "latency_ms": latency_ms,
            "map50": stats["metrics"]["map50"]}


def demo_anchors(card: Any, img_size: int, split: str = "train") -> list[list[float]]:
    """YOLO9000 k-means anchors (1 - IoU) of the training boxes at the demo's input size: the
    Darknet defaults are sized for 416-608 px COCO objects, the synthetic ones are 3-30 px."""
    import numpy as np

    from detprune.data import build_dataset
    from detprune.data.anchors import kmeans_anchors

    ds = build_dataset(card, split=split, img_size=img_size)
    wh = np.concatenate([(np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)[:, 2:]
                          - np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)[:, :2]) * (img_size / max(r.size))
                         for r in ds.records])  # box shapes as the letterbox scales them
    anchors, _ = kmeans_anchors(wh, 9)
    return [[round(float(w), 2), round(float(h), 2)] for w, h in anchors]


def dense_model(cfg: DemoConfig, card: Any, model_args: dict[str, Any], device: str | None, retrain: bool,
                progress: bool, cache: Path | None) -> tuple[Path, bool]:
    """The sparsity-trained dense model's checkpoint (``{"model": state_dict}``), trained once and cached."""
    import torch

    import detprune
    from detprune.data.synthetic import cache_dir
    from detprune.graph import trace
    from detprune.pipeline.trip import Data, PipelineConfig, train

    path = cache_dir(cache) / "demo" / cfg.key() / "dense.pt"
    if path.is_file() and not retrain:
        print(f"detprune demo: reusing the dense model trained by an earlier run: {path} "
              "(--retrain to train it again)", file=sys.stderr)
        return path, True
    print(f"detprune demo: training the dense YOLOv3 (width {cfg.width}, depth {cfg.depth}, input {cfg.img_size}) "
          f"for {cfg.dense_epochs} epochs with sparsity s={cfg.sparsity}; it is cached at {path}", file=sys.stderr)
    pcfg = PipelineConfig(model="yolov3", out=path.parent, data=card if cache is not None else None,
                          img_size=cfg.img_size, batch_size=cfg.batch_size, device=device, optimizer=cfg.optimizer,
                          lr=cfg.lr, seed=cfg.seed, train_limit=cfg.train_limit, val_limit=cfg.val_limit,
                          epochs_dense=cfg.dense_epochs, progress=progress)
    data = Data.load(pcfg)
    adapter = detprune.plugins().adapter("yolov3", num_classes=card.num_classes, img_size=cfg.img_size,
                                         width=cfg.width, **model_args)
    torch.manual_seed(cfg.seed)
    pruner = detprune.plugins().pruner("slimming", s=cfg.sparsity)
    model = adapter.build()
    pruner.attach(trace(model, adapter.example_inputs(1), protected=tuple(adapter.protected(model))))
    with tempfile.TemporaryDirectory(dir=_mkdir(path.parent)) as tmp:
        from detprune.training.distributed import resolve_device

        model, _ = train(model, adapter, data, pcfg, cfg.dense_epochs, Path(tmp) / "train",
                         resolve_device(device), pruner=pruner)
        staged = Path(tmp) / "dense.pt"
        torch.save({"model": model.state_dict(), "config": asdict(cfg),
                    "meta": {"model": "yolov3", "adapter_args": adapter.args}}, staged)
        os.replace(staged, path)
    plot = pruner.plot(path.parent)  # the γ histograms of sparsity training, beside the cached model
    if plot:
        print(f"detprune demo: γ distribution during sparsity training: {plot}", file=sys.stderr)
    return path, False


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def side_by_side_latency(models: dict[str, Any], inputs: tuple, rounds: int, iters: int) -> dict[str, float]:
    """Median latency per model over ``rounds * iters`` forward passes, the models taking turns pass by
    pass so that a shared machine's bursts of load fall on every model alike."""
    import statistics

    from detprune.eval.measure import measure_latency

    per: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        measure_latency(model, inputs, warmup=2, iters=2)
    for _ in range(max(1, rounds) * max(1, iters)):  # one pass of each model in turn, so bursts hit all
        for name, model in models.items():
            per[name].append(measure_latency(model, inputs, warmup=0, iters=1).median_ms)
    return {name: statistics.median(times) for name, times in per.items()}


def table(result: dict[str, Any]) -> str:
    """The demo's table, with the kept fraction of the dense model in parentheses."""
    rows = result["rows"]
    dense = rows[0]
    lines = [f"{'model':<10} {'params':>18} {'FLOPs':>20} {'latency ms':>16} {'mAP@0.5':>8} {'(before ft)':>11}"]
    for r in rows:
        kept = (lambda k: "" if r is dense else f" ({r[k] / dense[k]:.0%})")
        before = r.get("map50_before_finetune")
        lines.append(f"{r['name']:<10} {r['params']:>12,}{kept('params'):>6} {r['flops']:>14,}{kept('flops'):>6} "
                     f"{r['latency_ms']:>10.2f}{kept('latency_ms'):>6} {r['map50']:>8.4f} "
                     f"{'' if before is None else f'{before:.4f}':>11}")
    reuse = "reused from the cache" if result["dense_model_reused"] else "trained in this run"
    lines.append(f"dense model: {reuse} ({result['dense_model']}); device {result['device']}; "
                 f"{result['seconds']:.0f} s in all; run folders: {', '.join(result['runs'].values())}")
    if result.get("quick"):
        lines.append("--quick: a smoke run with a tiny model and budget; its mAP is not a result")
    return "\n".join(lines)

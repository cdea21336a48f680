"""The demo's work: train (or reuse) the sparsity-trained dense YOLOv3, run the NS and NS+sketch arms
through the pipeline, measure latency side by side, and the table (``detprune demo`` is its command
line; its --help says what the demo shows)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import detprune
from detprune.data import default_card
from detprune.data.anchors import dataset_anchors
from detprune.data.synthetic import cache_dir
from detprune.errors import DetpruneError
from detprune.eval.measure import side_by_side_latency
from detprune.graph import trace
from detprune.pipeline.trip import Data, PipelineConfig, train
from detprune.pipeline.trip import run as run_pipeline
from detprune.training.distributed import resolve_device


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
        keep = {
            k: v
            for k, v in asdict(self).items()
            if k
            not in ("ratio", "finetune_epochs", "alpha", "finetune_lr", "val_limit", "latency_rounds", "latency_iters")
        }
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


FULL = DemoConfig()
QUICK = DemoConfig(
    width=0.0625,
    depth=0.34,
    img_size=128,
    dense_epochs=1,
    finetune_epochs=1,
    batch_size=8,
    train_limit=32,
    val_limit=16,
    latency_rounds=2,
    latency_iters=3,
)

ARMS = (  # (row name, run folder, pipeline settings)
    ("NS", "ns", {"shortcut": "shared", "compensators": []}),
    ("NS+sketch", "ns-sketch", {"shortcut": "sketch", "compensators": ["sketch"]}),
)


def run_demo(
    cfg: DemoConfig,
    out: Path,
    device: str | None = None,
    retrain: bool = False,
    progress: bool = True,
    quick: bool = False,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Train (or reuse) the dense model, run both arms, measure latency side by side; the result dict."""
    _require_plugins()
    t0 = time.perf_counter()
    card = default_card(cache)
    anchors = dataset_anchors(card, cfg.img_size)
    model_args = {"depth": cfg.depth, "anchors": anchors}
    dense_path, reused = dense_model(cfg, card, model_args, device, retrain, progress, cache)
    base = PipelineConfig(
        model="yolov3",
        out=out,
        data=card if cache is not None else None,
        weights=dense_path,
        pruner="slimming",
        ratio=cfg.ratio,
        img_size=cfg.img_size,
        width=cfg.width,
        model_args=model_args,
        finetune_epochs=cfg.finetune_epochs,
        batch_size=cfg.batch_size,
        device=device,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        finetune_lr=cfg.finetune_lr,
        seed=cfg.seed,
        train_limit=cfg.train_limit,
        val_limit=cfg.val_limit,
        latency_iters=cfg.latency_iters,
        iou_range=False,
        progress=progress,
        overwrite=True,
    )
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
            reports[name].get("before_finetune") or {}
        ).get("map50")
    return {
        "rows": rows,
        "quick": quick,
        "config": asdict(cfg),
        "dense_model": str(dense_path),
        "dense_model_reused": reused,
        "device": first["device"],
        "data": first["data"],
        "runs": {name: str(out / folder) for name, folder, _ in ARMS},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _require_plugins() -> None:
    host = detprune.plugins()
    missing = [
        f"{kind} '{name}'"
        for kind, name in (("pruner", "slimming"), ("compensator", "sketch"))
        if name not in host.names(kind)
    ]
    if missing:
        raise DetpruneError(f"the demo needs {' and '.join(missing)}; `detprune plugins` lists what is installed")


def _row(name: str, stats: dict[str, Any], latency_ms: float) -> dict[str, Any]:
    return {
        "name": name,
        "params": stats["params"],
        "flops": stats["flops"],
        "latency_ms": latency_ms,
        "map50": stats["metrics"]["map50"],
    }


def dense_model(
    cfg: DemoConfig,
    card: Any,
    model_args: dict[str, Any],
    device: str | None,
    retrain: bool,
    progress: bool,
    cache: Path | None,
) -> tuple[Path, bool]:
    """The sparsity-trained dense model's checkpoint (``{"model": state_dict}``), trained once and cached."""
    import torch

    path = cache_dir(cache) / "demo" / cfg.key() / "dense.pt"
    if path.is_file() and not retrain:
        print(
            f"detprune demo: reusing the dense model trained by an earlier run: {path} (--retrain to train it again)",
            file=sys.stderr,
        )
        return path, True
    print(
        f"detprune demo: training the dense YOLOv3 (width {cfg.width}, depth {cfg.depth}, input {cfg.img_size}) "
        f"for {cfg.dense_epochs} epochs with sparsity s={cfg.sparsity}; it is cached at {path}",
        file=sys.stderr,
    )
    pcfg = PipelineConfig(
        model="yolov3",
        out=path.parent,
        data=card if cache is not None else None,
        img_size=cfg.img_size,
        batch_size=cfg.batch_size,
        device=device,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        seed=cfg.seed,
        train_limit=cfg.train_limit,
        val_limit=cfg.val_limit,
        epochs_dense=cfg.dense_epochs,
        progress=progress,
    )
    data = Data.load(pcfg)
    adapter = detprune.plugins().adapter(
        "yolov3", num_classes=card.num_classes, img_size=cfg.img_size, width=cfg.width, **model_args
    )
    torch.manual_seed(cfg.seed)
    pruner = detprune.plugins().pruner("slimming", s=cfg.sparsity)
    model = adapter.build()
    pruner.attach(trace(model, adapter.example_inputs(1), protected=tuple(adapter.protected(model))))
    with tempfile.TemporaryDirectory(dir=_mkdir(path.parent)) as tmp:
        model, _ = train(
            model, adapter, data, pcfg, cfg.dense_epochs, Path(tmp) / "train", resolve_device(device), pruner=pruner
        )
        staged = Path(tmp) / "dense.pt"
        torch.save(
            {
                "model": model.state_dict(),
                "config": asdict(cfg),
                "meta": {"model": "yolov3", "adapter_args": adapter.args},
            },
            staged,
        )
        os.replace(staged, path)
    plot = pruner.plot(path.parent)  # the γ histograms of sparsity training, beside the cached model
    if plot:
        print(f"detprune demo: γ distribution during sparsity training: {plot}", file=sys.stderr)
    return path, False


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def table(result: dict[str, Any]) -> str:
    """The demo's table, with the kept fraction of the dense model in parentheses."""
    rows = result["rows"]
    dense = rows[0]
    lines = [f"{'model':<10} {'params':>18} {'FLOPs':>20} {'latency ms':>16} {'mAP@0.5':>8} {'(before ft)':>11}"]
    for r in rows:

        def kept(k, r=r):
            return "" if r is dense else f" ({r[k] / dense[k]:.0%})"

        before = r.get("map50_before_finetune")
        lines.append(
            f"{r['name']:<10} {r['params']:>12,}{kept('params'):>6} {r['flops']:>14,}{kept('flops'):>6} "
            f"{r['latency_ms']:>10.2f}{kept('latency_ms'):>6} {r['map50']:>8.4f} "
            f"{'' if before is None else f'{before:.4f}':>11}"
        )
    reuse = "reused from the cache" if result["dense_model_reused"] else "trained in this run"
    lines.append(
        f"dense model: {reuse} ({result['dense_model']}); device {result['device']}; "
        f"{result['seconds']:.0f} s in all; run folders: {', '.join(result['runs'].values())}"
    )
    if result.get("quick"):
        lines.append("--quick: a smoke run with a tiny model and budget; its mAP is not a result")
    return "\n".join(lines)

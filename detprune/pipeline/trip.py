"""The trip of ../shared/DESIGN.md in one readable function: :func:`run`.

    build the model (+ weights, or train it dense) -> trace the ChannelGraph -> method training with
    the pruner's callbacks (Network Slimming's sparsity, MFP's soft pruning) -> evaluate and measure
    the dense model -> pruner.plan -> graph.apply -> compensators -> evaluate -> fine-tune ->
    evaluate and measure -> DIR/pruned.pt, DIR/report.json, DIR/report.md, plots

One process, one device: the Trainer phases can run under torchrun (see detprune.training.trainer), the
pipeline itself does not.

This is the protocol of the seed paper ("Pruning and fine-tuning optimization based on global
information"): sparsity-train, prune, compensate with the original model's information,
fine-tune, evaluate. ``detprune prune`` is its command line; ``detprune demo`` runs it twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import detprune
from detprune.api import PruneResult
from detprune.data import (
    DEFAULT_IMG_SIZE,
    DatasetCard,
    build_dataset,
    default_card,
    load_card,
)
from detprune.data.collate import collate_detection
from detprune.errors import DetpruneError
from detprune.eval.evaluate import evaluate_classifier, evaluate_model
from detprune.eval.measure import count_flops, count_params, measure_latency
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.pipeline.config import PipelineConfig, compensator_options, pruner_options
from detprune.pipeline.report import markdown, write_report
from detprune.pipeline.run_folder import RunFolder
from detprune.pipeline.weights import open_model
from detprune.plugin.context import PruneContext, split_holdout
from detprune.recipe import ATTR, mark, save
from detprune.training import distributed as D
from detprune.training.trainer import Trainer

__all__ = ["PipelineConfig", "PipelineResult", "run"]

log = logging.getLogger("detprune.pipeline.trip")


@dataclass
class PipelineResult:
    """The pruned model, what made it, and the report that :mod:`detprune.pipeline.report` wrote."""

    model: nn.Module
    dense: nn.Module
    plan: PruningPlan
    graph: Any
    report: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def run(cfg: PipelineConfig) -> PipelineResult:
    """Prune ``cfg.model`` on ``cfg.data`` as ``cfg`` says; see the module docstring for the steps.

    Everything that can be checked without work is checked first (values, every plugin name and
    option, the output folder); the run writes into a staging folder that replaces the previous
    result only when it succeeded (:mod:`detprune.pipeline.run_folder`).
    """
    cfg.check()
    pruner = _plugin("pruner", cfg.pruner, pruner_options(cfg))
    compensators = [(name, _plugin("compensator", name, opts)) for name, opts in compensator_options(cfg).items()]
    folder = RunFolder(cfg.out, overwrite=cfg.overwrite)
    try:
        result = _run(cfg, pruner, compensators, folder, trace)
    except BaseException:
        folder.discard()
        raise
    return result


def _run(
    cfg: PipelineConfig, pruner: Any, compensators: list[tuple[str, Any]], folder: RunFolder, trace: Any
) -> PipelineResult:
    stage = folder.stage
    clock = Clock()
    device = D.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    card = load_data_card(cfg)
    adapter, model = build_model(cfg, card)
    data = Data.load(cfg, card, adapter.args.get("img_size"), holdout=getattr(pruner, "holdout_fraction", 0.0))
    training: dict[str, Any] = {}

    if cfg.epochs_dense:
        with clock("dense training"):
            model, training["dense"] = train(
                model, adapter, data, cfg, cfg.epochs_dense, stage / "train" / "dense", device
            )
    model = model.to(device)
    ctx = PruneContext(
        example_inputs=tuple(t.to(device) for t in adapter.example_inputs(1)),
        ratio=cfg.ratio,
        round_to=cfg.round_to,
        global_ranking=cfg.global_ranking,
        min_keep=cfg.min_keep or 0.0,
        criterion=cfg.criterion or "l1",
        adapter=adapter,
        train_loader=data.train_loader,
        val_loader=data.val_loader,
        holdout_loader=data.holdout_loader,
        device=device,
        seed=cfg.seed,
        progress=cfg.progress,
        options={
            k: v
            for k, v in (("alpha", cfg.alpha), ("shortcut", cfg.shortcut), ("shortcut_width", cfg.shortcut_width))
            if v is not None
        },
    )
    with clock("trace"):
        graph = trace(model, ctx.example_inputs, protected=tuple(adapter.protected(model)))
    ctx.graph = graph  # every plugin works on this one graph (ctx.require_graph)
    pruner.bind(ctx)  # e.g. Network Slimming: which BN scales get the sparsity term; MFP: its meta batches
    if cfg.method_epochs:
        with clock("method training"):
            model, training["method"] = train(
                model, adapter, data, cfg, cfg.method_epochs, stage / "train" / "method", device, pruner=pruner
            )
    model = model.to(device).eval()
    with clock("dense evaluation"):
        dense_stats = measure(model, adapter, data, cfg, ctx.example_inputs)

    parent = getattr(model, ATTR, None)  # a model loaded from a recipe: the new recipe chains its stages
    builder = {"adapter": cfg.model, "args": dict(adapter.args)}
    with clock("plan"):
        plan = pruner.plan(model, graph, ctx)
    with clock("surgery"):
        pruned = graph.apply(model, plan)
    mark(pruned, parent, builder, graph, plan)
    compensation: dict[str, Any] = {}
    for name, compensator in compensators:
        with clock(f"compensate ({name})"):
            compensator.compensate(model, pruned, plan, ctx)
            compensation[name] = getattr(compensator, "report", None)
    before_finetune = None
    if cfg.eval_before_finetune and (cfg.finetune_epochs or compensation):
        with clock("evaluation before fine-tuning"):
            before_finetune = evaluate(pruned, adapter, data, cfg)

    if cfg.finetune_epochs:
        with clock("fine-tuning"):
            pruned, training["finetune"] = train(
                pruned,
                adapter,
                data,
                cfg,
                cfg.finetune_epochs,
                stage / "train" / "finetune",
                device,
                lr=cfg.finetune_lr,
            )
    pruned = pruned.to(device).eval()
    with clock("pruned evaluation"):
        pruned_stats = measure(pruned, adapter, data, cfg, ctx.example_inputs)

    with clock("save"):
        files = {"pruned": save_pruned(pruned, model, plan, graph, builder, parent, stage / "pruned.pt")}
    for phase in training.values():
        phase["folder"] = str(folder.final(phase["folder"]))
    report = {
        "model": cfg.model,
        "adapter_args": dict(adapter.args),
        "task": adapter.task,
        "data": data.describe(),
        "pruner": cfg.pruner,
        "pruner_options": pruner_options(cfg),
        "criterion": ctx.criterion,
        "ratio": cfg.ratio,
        "compensators": list(cfg.compensators),
        "compensator_options": compensator_options(cfg),
        "device": str(device),
        "dense": dense_stats,
        "pruned": pruned_stats,
        "before_finetune": before_finetune,
        "plan": plan,
        "graph": graph,
        "dense_model": model,
        "pruned_model": pruned,
        "compensation": compensation,
        "training": training,
        "timings_s": clock.seconds,
        "config": cfg,
    }
    files = write_report(report, stage, pruner=pruner if cfg.plots else None, plots=cfg.plots, files=files)
    _relocate_report(files, stage, folder.out)
    folder.commit()
    files = {k: folder.out / Path(p).name for k, p in files.items()}
    final = _read_json(files["json"])
    _notify(final)
    return PipelineResult(
        model=pruned, dense=model, plan=plan, graph=graph, report=final, out_dir=folder.out, files=files
    )


# ---- the steps ---------------------------------------------------------------------------------------


class Data:
    """The dataset card, its train/val splits (optionally thinned) and their loaders.

    The training split is loaded whenever the card has one, so data-driven criteria (ThiNet,
    Taylor-style scores) get ``ctx.train_loader`` even when nothing trains. With ``holdout`` > 0 (the
    pruner's ``holdout_fraction``) that fraction of it, drawn by ``cfg.seed``, is held out of every
    training phase into ``holdout_loader`` (``ctx.holdout_loader``): unseen images that are not the
    scored val split.
    """

    def __init__(self, card: Any, train_ds: Any, val_ds: Any, img_size: int, cfg: PipelineConfig, holdout: float = 0.0):
        self.holdout_ds = None
        if holdout and train_ds is not None:
            train_ds, self.holdout_ds = split_holdout(train_ds, holdout, cfg.seed)
        self.card, self.train_ds, self.val_ds, self.img_size, self.cfg = card, train_ds, val_ds, img_size, cfg
        collate = None
        if card.task == "detection":
            collate = collate_detection
        self.holdout_loader = (
            None
            if self.holdout_ds is None
            else D.make_loader(self.holdout_ds, cfg.batch_size, train=False, workers=cfg.workers, collate_fn=collate)
        )
        self.train_loader = (
            None
            if train_ds is None
            else D.make_loader(
                train_ds, cfg.batch_size, train=True, workers=cfg.workers, seed=cfg.seed, collate_fn=collate
            )
        )
        self.val_loader = D.make_loader(val_ds, cfg.batch_size, train=False, workers=cfg.workers, collate_fn=collate)

    @classmethod
    def load(cls, cfg: PipelineConfig, card: Any = None, img_size: int | None = None, holdout: float = 0.0) -> Data:
        card = card if card is not None else load_data_card(cfg)
        size = img_size or cfg.img_size or card.img_size or DEFAULT_IMG_SIZE[card.task]
        val_ds = build_dataset(card, split=cfg.val_split, img_size=size, train=False)
        needs_train = bool(cfg.epochs_dense or cfg.method_epochs or cfg.finetune_epochs)
        train_ds = None
        if needs_train or card.has_split(cfg.train_split):
            train_ds = build_dataset(card, split=cfg.train_split, img_size=size, train=True)
        return cls(card, _thin(train_ds, cfg.train_limit), _thin(val_ds, cfg.val_limit), size, cfg, holdout)

    def describe(self) -> dict[str, Any]:
        return {
            "card": str(self.card.source),
            "name": self.card.name,
            "img_size": self.img_size,
            "train_split": self.cfg.train_split if self.train_ds is not None else None,
            "val_split": self.cfg.val_split,
            "train_images": len(self.train_ds) if self.train_ds is not None else 0,
            "holdout_images": len(self.holdout_ds) if self.holdout_ds is not None else 0,
            "val_images": len(self.val_ds),
        }


def load_data_card(cfg: PipelineConfig) -> Any:
    """The card ``cfg.data`` names (a path, a folder, a DatasetCard), or the embedded synthetic set."""
    if cfg.data is None:
        return default_card()
    return cfg.data if isinstance(cfg.data, DatasetCard) else load_card(cfg.data)


def _thin(ds: Any, limit: int | None) -> Any:
    """``limit`` evenly spaced samples of ``ds`` (class folders stay balanced), or ``ds`` itself."""
    if ds is None or limit is None or limit >= len(ds):
        return ds
    from torch.utils.data import Subset

    idx = torch.linspace(0, len(ds) - 1, max(1, limit)).round().long().unique().tolist()
    return Subset(ds, idx)


def build_model(cfg: PipelineConfig, card: Any) -> tuple[Any, nn.Module]:
    """The adapter and the starting model: built, or read from ``cfg.weights`` (:mod:`detprune.pipeline.weights`).

    A pruned recipe is pruned further (iterative pruning, as SlimYOLOv3's two passes): the model
    carries its recipe, and the new recipe replays both passes.
    """
    loaded = open_model(
        cfg.model, card, cfg.weights, img_size=cfg.img_size, overrides={"width": cfg.width, **cfg.model_args}
    )
    return loaded.adapter, loaded.model


def train(
    model: nn.Module,
    adapter: Any,
    data: Data,
    cfg: PipelineConfig,
    epochs: int,
    out_dir: Path,
    device: torch.device,
    pruner: Any = None,
    lr: float | None = None,
    resume: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """``epochs`` of the Trainer on the model as it is (never rebuilt); callbacks from ``pruner``;
    ``resume`` continues ``out_dir/last.pt``."""
    if data.train_loader is None:
        raise DetpruneError("training needs a training split")
    base_lr = cfg.lr if cfg.lr is not None else (0.01 if cfg.optimizer == "sgd" else 0.001)
    options: dict[str, Any] = dict(
        lr=lr or base_lr,
        optimizer=cfg.optimizer,
        warmup_epochs=cfg.warmup_epochs,
        amp=cfg.amp,
        seed=cfg.seed,
        device=str(device),
        progress=cfg.progress,
    )
    if cfg.weight_decay is not None:
        options["weight_decay"] = cfg.weight_decay
    trainer = Trainer(
        model,
        adapter,
        data.train_loader,
        None,
        epochs=epochs,
        out_dir=out_dir,
        pruner=pruner,
        meta={"model": cfg.model, "adapter_args": adapter.args},
        **options,
    )
    result = trainer.fit(resume=resume)
    return result.model, {"epochs": epochs, "lr": options["lr"], "history": result.history, "folder": str(out_dir)}


def evaluate(model: nn.Module, adapter: Any, data: Data, cfg: PipelineConfig) -> dict[str, Any]:
    """The task's metrics on the validation split through :mod:`detprune.eval.evaluate`."""
    if adapter.task == "classification":
        return evaluate_classifier(model, data.val_loader, progress=cfg.progress)
    result = evaluate_model(model, adapter, data.val_loader, iou_range=cfg.iou_range, progress=cfg.progress)
    return {k: result[k] for k in ("map50", "map50_500", "map", "per_class", "images", "detections") if k in result}


def measure(model: nn.Module, adapter: Any, data: Data, cfg: PipelineConfig, inputs: tuple) -> dict[str, Any]:
    """Metrics, parameters, FLOPs (2·MAC) and median latency (batch 1) of one model."""
    stats: dict[str, Any] = {
        "metrics": evaluate(model, adapter, data, cfg),
        "params": count_params(model),
        "flops": count_flops(model, inputs),
    }
    lat = measure_latency(model, inputs, warmup=cfg.latency_warmup, iters=cfg.latency_iters)
    stats.update(latency_ms=lat.median_ms, latency=lat.as_dict())
    return stats


def save_pruned(
    pruned: nn.Module,
    dense: nn.Module,
    plan: PruningPlan,
    graph: Any,
    builder: dict[str, Any],
    parent: dict[str, Any] | None,
    path: Path,
) -> Path:
    """``DIR/pruned.pt``: recipe + weights, loadable by ``detprune.load`` and ``detprune eval --weights``."""
    result = PruneResult(
        model=pruned.eval(),
        plan=plan,
        graph=graph,
        params_before=count_params(dense),
        params_after=count_params(pruned),
        builder=None if parent else builder,
        dense=dense,
        parent=parent,
    )
    return save(result, path)


# ---- helpers ------------------------------------------------------------------------------------------


class Clock:
    """Seconds per stage, logged as each stage starts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        log.info("detprune: %s ...", stage)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - t0, 3)


def _plugin(kind: str, name: str, options: dict[str, Any]) -> Any:
    return detprune.plugins().create(kind, name, **options)


def _relocate_report(files: dict[str, Path], stage: Path, out: Path) -> None:
    """Paths in report.json/.md name where files will be after the commit, not the staging folder."""

    def move(obj: Any) -> Any:
        if isinstance(obj, str):
            return obj.replace(str(stage), str(out))
        if isinstance(obj, dict):
            return {k: move(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [move(v) for v in obj]
        return obj

    report = move(_read_json(files["json"]))
    Path(files["json"]).write_text(json.dumps(report, indent=2))
    Path(files["md"]).write_text(markdown(report))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _notify(report: dict[str, Any]) -> None:
    detprune.plugins().report({"event": "pruned", **report})

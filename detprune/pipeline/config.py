"""What one pipeline run is asked to do (:class:`PipelineConfig`, the mirror of ``detprune prune``),
and how its flags become plugin options.

Flags that belong to a method (``--sparsity``, ``--shortcut``, ``--alpha``) are passed to the plugins
whose factories take them; a flag that no chosen plugin takes is an error naming the flag, never
silently ignored.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import detprune
from detprune.errors import DetpruneError


@dataclass
class PipelineConfig:
    """One trip through ../shared/DESIGN.md's diagram; each field is a ``detprune prune`` flag."""

    model: str  # model adapter name (--model)
    out: str | Path  # run folder (--out)
    data: Any = None  # card file, folder or DatasetCard; None: the synthetic default
    weights: str | Path | None = None  # state_dict, trainer checkpoint or pruned recipe
    pruner: str = "oneshot"
    ratio: float = 0.5  # fraction of channels removed
    criterion: str | None = None  # default: the pruner's own (oneshot: l1)
    sparsity: float | None = None  # Network Slimming's s (pruner option ``s``)
    sparsity_epochs: int = 0  # method-training phase with the pruner's callbacks
    prune_epochs: int = 0  # the same phase, under its generic name
    compensators: list[str] = field(default_factory=list)
    alpha: float | None = None  # compensator option ``alpha``
    shortcut: str | None = None  # pruner option ``shortcut`` (shared | union | sketch)
    shortcut_width: str | None = None  # pruner option ``shortcut_width`` (min | mean)
    min_keep: float | None = None  # per-group floor (fraction of its channels)
    round_to: int | None = None
    global_ranking: bool = False
    finetune_epochs: int = 0
    epochs_dense: int = 0  # train the dense model first (only without weights)
    img_size: int | None = None
    width: float | None = None
    model_args: dict[str, Any] = field(default_factory=dict)  # more adapter build args (depth=...)
    batch_size: int = 16
    device: str | None = None
    lr: float | None = None  # default 0.01 (sgd) / 0.001 (adamw)
    finetune_lr: float | None = None  # default: lr
    optimizer: str = "sgd"
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    amp: bool = False
    workers: int = 0
    seed: int = 0
    train_split: str = "train"
    val_split: str = "val"
    train_limit: int | None = None  # use this many (evenly spaced) training images
    val_limit: int | None = None
    pruner_options: dict[str, Any] = field(default_factory=dict)
    compensator_options: dict[str, Any] = field(default_factory=dict)
    eval_before_finetune: bool = True  # score the pruned (+ compensated) model before fine-tuning
    latency_iters: int = 30
    latency_warmup: int = 5
    iou_range: bool = True  # False: score IoU 0.5 only (faster; "map" = -1)
    progress: bool = True
    plots: bool = True
    overwrite: bool = False

    @property
    def method_epochs(self) -> int:
        return max(self.sparsity_epochs, self.prune_epochs)

    def check(self) -> None:
        """Refuse contradictory or out-of-range settings with the flag's name."""
        if not 0.0 <= self.ratio < 1.0:
            raise DetpruneError(f"--ratio must be in [0, 1), the fraction of channels removed; got {self.ratio}")
        for flag, value in (
            ("--sparsity-epochs", self.sparsity_epochs),
            ("--prune-epochs", self.prune_epochs),
            ("--finetune-epochs", self.finetune_epochs),
            ("--epochs-dense", self.epochs_dense),
        ):
            if value < 0:
                raise DetpruneError(f"{flag} must be >= 0, got {value}")
        if self.sparsity_epochs and self.prune_epochs and self.sparsity_epochs != self.prune_epochs:
            raise DetpruneError(
                f"--sparsity-epochs {self.sparsity_epochs} and --prune-epochs {self.prune_epochs} "
                "name the same phase; give one of them"
            )
        if self.sparsity is not None and not self.method_epochs:
            raise DetpruneError("--sparsity has no effect without --sparsity-epochs E (the sparsity-training phase)")
        if self.sparsity is not None and self.sparsity < 0:
            raise DetpruneError(f"--sparsity must be >= 0, got {self.sparsity}")
        if self.epochs_dense and self.weights:
            raise DetpruneError(
                "--epochs-dense trains the dense model from scratch; it cannot be combined with "
                "--weights (use --prune-epochs / --finetune-epochs to train further)"
            )
        if self.alpha is not None and not self.compensators:
            raise DetpruneError("--alpha is a compensator option; add --compensator sketch")
        if self.min_keep is not None and not 0.0 <= self.min_keep <= 1.0:
            raise DetpruneError(f"--min-keep must be in [0, 1], got {self.min_keep}")
        if self.alpha is not None and not 0.0 <= self.alpha < 1.0:
            raise DetpruneError(f"--alpha must be in [0, 1) (layers pruned above it are compensated), got {self.alpha}")
        for flag, value, low in (
            ("--batch-size", self.batch_size, 1),
            ("--latency-iters", self.latency_iters, 1),
            ("--workers", self.workers, 0),
            ("--img-size", self.img_size, 1),
            ("--round-to", self.round_to, 1),
        ):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise DetpruneError(f"{flag} must be an integer >= {low}, got {value!r}")
        for flag, value in (("--warmup-epochs", self.warmup_epochs), ("--weight-decay", self.weight_decay)):
            if value is not None and not value >= 0:
                raise DetpruneError(f"{flag} must be >= 0, got {value}")
        for flag, value in (("--lr", self.lr), ("--finetune-lr", self.finetune_lr), ("--width", self.width)):
            if value is not None and not value > 0:
                raise DetpruneError(f"{flag} must be > 0, got {value}")


def _parameters(factory: Any) -> tuple[set[str], bool]:
    """Keyword names a plugin factory takes, and whether it takes any (``**options``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return set(), True
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}, takes_all


def takes(factory: Any, key: str) -> bool:
    names, takes_all = _parameters(factory)
    return takes_all or key in names


def pruner_options(cfg: PipelineConfig) -> dict[str, Any]:
    """The pruner's keyword options from the flags that belong to it, plus ``--pruner-opt``."""
    factory = detprune.plugins().get("pruner", cfg.pruner).factory
    if cfg.criterion is not None:
        detprune.plugins().get("criterion", cfg.criterion)  # an unknown name fails before any training
    flags = {
        "s": (cfg.sparsity, "--sparsity"),
        "shortcut": (cfg.shortcut, "--shortcut"),
        "shortcut_width": (cfg.shortcut_width, "--shortcut-width"),
        "criterion": (cfg.criterion, "--criterion"),
    }
    out: dict[str, Any] = {}
    for key, (value, flag) in flags.items():
        if value is None:
            continue
        if not takes(factory, key):
            raise DetpruneError(
                f"pruner '{cfg.pruner}' takes no option '{key}' ({flag} {value}); its options: {_describe(factory)}"
            )
        out[key] = value
    if cfg.min_keep is not None and takes(factory, "min_keep"):
        out["min_keep"] = cfg.min_keep
    out.update(cfg.pruner_options)
    return out


def compensator_options(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Per compensator (in chain order) its keyword options: ``--alpha`` and ``--compensator-opt``
    go to every compensator that takes the key; a key none of them takes is an error."""
    host = detprune.plugins()
    factories = {name: host.get("compensator", name).factory for name in cfg.compensators}
    wanted = dict(cfg.compensator_options)
    if cfg.alpha is not None:
        wanted["alpha"] = cfg.alpha
    out: dict[str, dict[str, Any]] = {name: {} for name in cfg.compensators}
    for key, value in wanted.items():
        takers = [n for n, f in factories.items() if takes(f, key)]
        if not takers:
            flag = "--alpha" if key == "alpha" else f"--compensator-opt {key}=..."
            raise DetpruneError(f"no chosen compensator ({', '.join(cfg.compensators)}) takes option '{key}' ({flag})")
        for n in takers:
            out[n][key] = value
    return out


def _describe(factory: Any) -> str:
    names, takes_all = _parameters(factory)
    names.discard("self")
    listed = ", ".join(sorted(names)) or "(none)"
    return listed + (" and any keyword" if takes_all else "")

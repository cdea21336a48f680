"""One Trainer for every adapter: train, sparsity-train and fine-tune, on one device or many.

``Trainer(model, adapter, train_loader, val_loader, epochs=..., out_dir=..., pruner=...)`` trains
the model it is given and never rebuilds it, so a model that is already pruned is fine-tuned as
is. Checkpoints hold ``state_dict``s only (see :mod:`detprune.training.checkpoint`): to resume or reload a
pruned model, build the pruned architecture first (``detprune.load(recipe)``) and pass it in.

One optimiser step, and when each pruner callback fires (the :class:`detprune.plugin.protocols.Pruner`
lifecycle; without a pruner, the base class's no-ops)::

    loss, parts = pruner.train_step(model, batch, adapter, forward, backward)
        # default: outputs = forward(images)              (autocast when AMP is on, fp32 outputs)
        #          loss = adapter.loss(outputs, targets) + pruner.loss_term(model, outputs, batch)
        #          backward(loss)                         (scaled under fp16; DDP all-reduces here)
        # AutoSlim's sandwich rule overrides it: several forwards, one backward each, one step
    scaler.unscale_(optimizer)                     # fp16 only: true gradients from here on
    pruner.on_after_backward(model)                # e.g. Network Slimming's s*sign(gamma) (§3.3)
    clip_grad_norm_(...); scaler.step(optimizer)
    pruner.on_after_step(model)                    # weights just stepped; e.g. MFP's hard mode re-masks
    scheduler.step(); ema.update(model)
    ... after the last batch of epoch e (0-based): pruner.on_epoch_end(model, e)  # e.g. MFP
    ... then evaluation (every ``eval_every`` epochs and at the last), then checkpoints
        (``pruner.state_dict()`` goes into last.pt; ``load_state_dict`` restores it on --resume).

Callbacks receive the bare model (never the DDP wrapper) and run on every rank: they must act
identically on each (they see identical weights and all-reduced gradients).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from detprune.data.collate import move_batch
from detprune.errors import DetpruneError
from detprune.plugin.protocols import Pruner, conform
from detprune.recipe import checkpoint_meta
from detprune.training import checkpoint as ckpt
from detprune.training import distributed as D
from detprune.training.config import (
    TrainConfig,
    seed_everything,
    use_deterministic_kernels,
)
from detprune.training.ema import ModelEMA
from detprune.training.runlog import plot_history, write_metrics_csv
from detprune.training.schedule import build_optimizer, build_scheduler, warmup_cosine
from detprune.training.validate import (
    EvaluateFn,
    autocast,
    primary_metric,
    to_device,
    to_float32,
    validate,
)

__all__ = [
    "Trainer",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "seed_everything",
    "use_deterministic_kernels",
]

log = logging.getLogger("detprune.training.trainer")

LAST, BEST, CSV, PLOT = "last.pt", "best.pt", "metrics.csv", "metrics.png"


class TrainingDivergedError(DetpruneError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` hands back. ``model`` is the evaluated weights (the EMA when on)."""

    model: nn.Module
    history: list[dict[str, Any]]
    metric: str
    best: float | None
    best_epoch: int | None
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


class Trainer:
    """Trains ``model`` in place with ``adapter``'s loss; see the module docstring for the step."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Any,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        *,
        epochs: int,
        out_dir: str | os.PathLike,
        pruner: Any = None,
        evaluate_fn: EvaluateFn | None = None,
        meta: dict[str, Any] | None = None,
        **options: Any,
    ):
        self.cfg = TrainConfig(epochs=epochs, **options)
        self.adapter = adapter
        self.pruner = conform("pruner", pruner if pruner is not None else Pruner())  # no-op steps by default
        self.meta = {**checkpoint_meta(model), **dict(meta or {})}  # a pruned model's recipe rebuilds it
        if isinstance(getattr(adapter, "name", None), str) and isinstance(getattr(adapter, "args", None), dict):
            self.meta.setdefault("model", adapter.name)
            self.meta.setdefault("adapter_args", dict(adapter.args))
        self.train_loader, self.val_loader = train_loader, val_loader
        self.out_dir = Path(out_dir)
        self.metric = primary_metric(adapter)
        self.evaluate_fn = evaluate_fn
        self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            raise DetpruneError("the training loader yields no batch (dataset smaller than one batch?)")

        self.device = D.resolve_device(self.cfg.device)
        self.distributed = D.init_distributed(self.device)
        if self.device.type == "cuda" and not self.cfg.deterministic:
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        fmt = torch.channels_last if self.cfg.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=fmt)
        self.net: nn.Module = self.model
        if self.distributed:
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.find_unused_parameters,
            )

        c = self.cfg
        self.optimizer = build_optimizer(
            self.model.parameters(),
            c.optimizer,
            lr=c.lr,
            weight_decay=c.weight_decay,
            momentum=c.momentum,
            nesterov=c.nesterov,
            fused=self.device.type == "cuda",
        )
        self._schedule = dict(
            warmup_steps=round(c.warmup_epochs * self.steps_per_epoch),
            total_steps=c.epochs * self.steps_per_epoch,
            min_factor=c.min_lr_ratio,
        )
        self.scheduler = build_scheduler(self.optimizer, **self._schedule)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(self.model, c.ema_decay, c.ema_tau) if c.ema else None

        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.history: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_epoch: int | None = None

    # ---- public ---------------------------------------------------------------------------------
    def fit(self, resume: bool | str | os.PathLike = False) -> TrainResult:
        """Train up to ``epochs``; ``resume`` continues ``out_dir/last.pt`` (or the given path)."""
        last = self.out_dir / LAST
        if resume:
            self.load(last if resume is True else Path(resume))
        else:
            if last.exists():
                raise DetpruneError(
                    f"{self.out_dir} already holds a run ({last}); pass --resume to continue it, "
                    "or choose another output folder"
                )
            seed_everything(self.cfg.seed + D.rank())
        if self.cfg.deterministic:
            use_deterministic_kernels()
        if D.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.epoch >= self.cfg.epochs and D.is_main():
            log.info("nothing to do: %s already trained %d epochs (asked for %d)", last, self.epoch, self.cfg.epochs)
        for epoch in range(self.epoch, self.cfg.epochs):
            sampler = getattr(self.train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            row = self.train_epoch(epoch)
            D.broadcast_buffers(self.model, self.ema.module if self.ema is not None else None)
            self.pruner.on_epoch_end(self.model, epoch)
            if self.val_loader is not None and ((epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs):
                row.update(self.evaluate())
            self.epoch = epoch + 1
            self.history.append(row)
            improved = self.metric in row and (self.best is None or row[self.metric] > self.best)
            if improved:
                self.best, self.best_epoch = float(row[self.metric]), self.epoch
            self.save(best=improved)
            if D.is_main():
                log.info(
                    "epoch %d/%d  %s  saved %s",
                    self.epoch,
                    self.cfg.epochs,
                    "  ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)),
                    last,
                )
        D.barrier()
        files = {k: self.out_dir / v for k, v in (("last", LAST), ("best", BEST), ("csv", CSV), ("plot", PLOT))}
        return TrainResult(
            self.eval_model,
            self.history,
            self.metric,
            self.best,
            self.best_epoch,
            self.out_dir,
            {k: p for k, p in files.items() if p.exists()},
        )

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and saved as best: the EMA when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate(self) -> dict[str, float]:
        """The adapter's metric on the validation loader (same numbers on every rank)."""
        if self.evaluate_fn is not None:
            return self.evaluate_fn(self.eval_model, self.val_loader)  # type: ignore[arg-type]
        return validate(
            self.eval_model,
            self.adapter,
            self.val_loader,
            self.device,  # type: ignore[arg-type]
            autocast_dtype=self.amp_dtype,
            channels_last=self.cfg.channels_last,
            progress=self.cfg.progress,
        )

    # ---- one epoch --------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training loader; returns the epoch's metrics row (no eval, no saving)."""
        c, pruner = self.cfg, self.pruner
        self.net.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, batches, non-finite
        parts: dict[str, float] = {}
        images_seen, t0 = 0, time.perf_counter()
        bar = tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{c.epochs}",
            leave=False,
            disable=not (c.progress and D.is_main()),
            dynamic_ncols=True,
        )
        for i, batch in enumerate(self.train_loader):
            images, _, batch = self._to_device(batch)
            loss, named = pruner.train_step(self.model, batch, self.adapter, self._forward, self._backward)
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)  # callbacks and clipping see true gradients
            pruner.on_after_backward(self.model)
            if c.clip_grad_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), c.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            pruner.on_after_step(self.model)
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.model)

            detached = loss.detach().double()
            sums += torch.stack([detached, torch.ones_like(detached), (~torch.isfinite(detached)).double()])
            for k, v in named.items():
                parts[k] = parts.get(k, 0.0) + float(v)
            images_seen += int(images.shape[0])
            if (i + 1) % c.log_every == 0 or i + 1 == self.steps_per_epoch:
                self._check_finite(sums, epoch, i)
                rate = images_seen * D.world_size() / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(
                    loss=f"{sums[0].item() / max(sums[1].item(), 1):.4g}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.3g}",
                    img_s=f"{rate:.1f}",
                    refresh=False,
                )
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        keys = sorted(parts)
        totals = D.all_reduce_sum(
            torch.tensor(
                [sums[0].item(), sums[1].item(), *[parts[k] for k in keys]], dtype=torch.float64, device=self.device
            )
        ).tolist()
        n = max(totals[1], 1.0)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "train_loss": totals[0] / n,
        }
        row.update({k: v / n for k, v in zip(keys, totals[2:])})
        row.update({"img_per_s": images_seen * D.world_size() / max(elapsed, 1e-9), "epoch_s": elapsed})
        return row

    def _forward(self, images: torch.Tensor) -> Any:
        """The (DDP-wrapped) model on ``images`` under autocast; fp32 outputs."""
        with autocast(self.device, self.amp_dtype):
            outputs = self.net(images)
        return to_float32(outputs) if self.amp_dtype is not None else outputs

    def _backward(self, loss: torch.Tensor) -> None:
        """Accumulate ``loss``'s gradients (scaled under fp16); may be called several times per step."""
        self.scaler.scale(loss).backward()

    def _check_finite(self, sums: torch.Tensor, epoch: int, i: int) -> None:
        """Collective check (one small all-reduce per ``log_every`` steps), so every rank stops together."""
        bad = D.all_reduce_sum(sums[2:3].clone()).item()
        if bad and not self.scaler.is_enabled():  # fp16 skips non-finite steps by itself
            raise TrainingDivergedError(
                f"loss is not finite at epoch {epoch + 1}, step {i + 1} "
                f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); "
                f"lower the learning rate or set a gradient clip. The last good checkpoint is {self.out_dir / LAST}"
            )

    def _to_device(self, batch: Any) -> tuple[torch.Tensor, Any, tuple[Any, ...]]:
        """``(images, targets, *rest)`` with images and target tensors on the training device."""
        images, targets, *rest = batch
        images = to_device(images, self.device, self.cfg.channels_last)
        targets = move_batch(targets, self.device, non_blocking=True)
        return images, targets, (images, targets, *rest)

    def _amp_dtype(self) -> torch.dtype | None:
        if not self.cfg.amp:
            return None
        if self.cfg.amp_dtype == "fp16":
            return torch.float16
        if self.cfg.amp_dtype == "bf16":
            return torch.bfloat16
        if self.device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16

    # ---- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; tensors and plain containers only (weights_only-safe)."""
        rngs = D.all_gather_objects(ckpt.rng_state())
        return {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "kind": "last",
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "pruner": self.pruner.state_dict(),
            "rng": rngs,
            "metric": self.metric,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "config": asdict(self.cfg),
            "world_size": D.world_size(),
            "meta": self.meta,
        }

    def save(self, best: bool = False) -> None:
        """Write ``last.pt`` (keeping the previous as ``last.prev.pt``), ``best.pt``, CSV and plot."""
        state = self.state_dict()  # collective (gathers RNG states): every rank calls it
        if D.is_main():
            ckpt.save_atomic(state, self.out_dir / LAST, keep_previous=True)
            if best:
                ckpt.save_atomic(
                    {
                        "format": ckpt.FORMAT,
                        "version": ckpt.VERSION,
                        "kind": "best",
                        "epoch": self.epoch,
                        "model": self.eval_model.state_dict(),
                        "metric": self.metric,
                        "best": self.best,
                        "meta": self.meta,
                        "config": asdict(self.cfg),
                    },
                    self.out_dir / BEST,
                )
            write_metrics_csv(self.history, self.out_dir / CSV)
            plot_history(self.history, self.out_dir / PLOT, self.metric)
        D.barrier()

    def load(self, path: str | os.PathLike) -> None:
        """Restore a ``last.pt`` written by :meth:`save` into this trainer (model built by the caller)."""
        path = Path(path)
        if not path.exists():
            raise ckpt.CheckpointError(f"{path}: no checkpoint to resume from (start without --resume)")
        state = ckpt.load_checkpoint(path)
        if state.get("kind") != "last":
            raise ckpt.CheckpointError(
                f"{path}: a '{state.get('kind')}' checkpoint holds weights only; resume from last.pt"
            )
        ckpt.load_model_state(self.model, state["model"], path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ckpt.CheckpointError(f"{path}: optimizer/scheduler state does not fit this run: {exc}") from exc
        self._apply_schedule()
        if self.ema is not None:
            if state["ema"] is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                log.warning("%s has no EMA; starting the average from the resumed weights", path)
                self.ema = ModelEMA(self.model, self.cfg.ema_decay, self.cfg.ema_tau)
        if state.get("pruner") is not None:
            try:
                self.pruner.load_state_dict(state["pruner"])
            except DetpruneError as exc:
                raise ckpt.CheckpointError(
                    f"{path}: holds a pruner state this run's pruner cannot load: {exc}"
                ) from exc
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        rngs = state["rng"]
        if len(rngs) == D.world_size():
            ckpt.set_rng_state(rngs[D.rank()])
        else:
            log.warning(
                "%s was written by %d processes, this run has %d: random streams are re-seeded",
                path,
                len(rngs),
                D.world_size(),
            )
            seed_everything(self.cfg.seed + 1000 * self.epoch + D.rank())
        if D.is_main():
            log.info("resumed %s at epoch %d/%d", path, self.epoch, self.cfg.epochs)

    def _apply_schedule(self) -> None:
        """After a resume, set each group's lr from this run's curve (it changes when ``epochs`` grows)."""
        step = self.scheduler.last_epoch
        factor = warmup_cosine(step, **self._schedule)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor

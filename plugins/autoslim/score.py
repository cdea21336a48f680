"""How good is one width? AutoSlim scores candidate widths on held-out batches (§3.2;
research/algorithms.md §5.3): top-1 for classifiers (JiahuiYu scores one batch, mmrazor the whole
validation set), the task loss as a fast proxy (the default for detectors, §5.5), or mAP@0.5 on a
validation subset. Each score is a tuple compared lexicographically: ``(top1, -loss)`` breaks
top-1 ties on a few batches by the loss; higher is better.

BatchNorm: ``bn="calibrate"`` re-estimates the statistics for every candidate on a few training
batches (JiahuiYu's post-statistics, train mode); ``bn="batch"`` normalises each scored batch with
its own statistics (mmrazor's ``bn_training_mode``), cheaper and calibration-free.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from detprune.data.collate import move_batch
from detprune.errors import DetpruneError
from detprune.eval.evaluate import evaluate_detections
from detprune.graph.capture import evaluating
from detprune_plugins.autoslim.slimmable import (
    Slimmable,
    batch_statistics,
    calibrate_bn,
)

METRICS = ("auto", "loss", "top1", "map50")
BN_MODES = ("calibrate", "batch")


def take_batches(loader: Iterable[Any], n: int, seed: int = 0) -> list[Any]:
    """The first ``n`` batches of ``loader``, the same ones in every process and on every call.

    A shuffling ``DistributedSampler`` is read at epoch 0 (then put back), and the random streams
    that augmentations draw from are seeded with ``seed`` and restored: a resumed search must
    score on exactly the batches of the run it continues.
    """
    if n <= 0 or loader is None:
        return []
    sampler = getattr(loader, "sampler", None)
    epoch = getattr(sampler, "epoch", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)
    py, npst = random.getstate(), np.random.get_state()
    out: list[Any] = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            for batch in loader:
                out.append(batch)
                if len(out) >= n:
                    break
    finally:
        random.setstate(py)
        np.random.set_state(npst)
        if epoch is not None:
            sampler.set_epoch(epoch)
    return out


class Scorer:
    """``scorer(config) -> tuple`` (higher is better) for the masked model at ``config``."""

    def __init__(
        self,
        model: nn.Module,
        slim: Slimmable,
        adapter: Any,
        batches: list[Any],
        calib: list[torch.Tensor],
        metric: str = "auto",
        bn: str = "calibrate",
        dataset: Any = None,
    ):
        if metric not in METRICS:
            raise DetpruneError(f"autoslim: metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if bn not in BN_MODES:
            raise DetpruneError(f"autoslim: bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
        task = getattr(adapter, "task", "classification")
        if metric == "auto":
            metric = "top1" if task == "classification" else "loss"
        if metric == "top1" and task != "classification":
            raise DetpruneError("autoslim: metric 'top1' needs a classifier; use 'loss' or 'map50' for a detector")
        if metric == "map50" and (task != "detection" or not hasattr(dataset, "coco_gt")):
            raise DetpruneError(
                "autoslim: metric 'map50' needs a detector and a validation loader over a detprune detection dataset"
            )
        if not batches:
            raise DetpruneError("autoslim: no batch to score widths on (give a validation or training loader)")
        if bn == "calibrate" and not calib:
            raise DetpruneError("autoslim: bn='calibrate' needs training batches (ctx.train_loader); or use bn='batch'")
        self.model, self.slim, self.adapter = model, slim, adapter
        self.metric, self.bn, self.dataset = metric, bn, dataset
        device = next(model.parameters()).device
        self.batches = [move_batch(b, device) for b in batches]
        self.calib = [move_batch(c, device) for c in calib]
        self.evaluations = 0

    @torch.no_grad()
    def __call__(self, config: Mapping[int, int]) -> tuple[float, ...]:
        self.slim.set_config(config)
        self.evaluations += 1
        if self.bn == "calibrate":
            calibrate_bn(self.model, self.calib)
            mode = evaluating(self.model)
        else:
            mode = batch_statistics(self.model)
        loss_sum, correct, n, preds, ids = 0.0, 0, 0, [], []
        with mode:
            for images, targets, *rest in self.batches:
                outputs = self.model(images)
                b = int(images.shape[0])
                loss_sum += float(self.adapter.loss(outputs, targets)[0]) * b
                n += b
                if self.metric == "top1":
                    correct += int((outputs.argmax(1) == targets).sum())
                elif self.metric == "map50":
                    metas = rest[0]
                    for det, meta in zip(self.adapter.decode(outputs, metas), metas):
                        preds.append({**det, "image_id": meta["image_id"]})
                        ids.append(meta["image_id"])
        loss = loss_sum / max(n, 1)
        if self.metric == "top1":
            return (correct / max(n, 1), -loss)
        if self.metric == "map50":
            m = evaluate_detections(preds, self.dataset, iou_range=False, image_ids=ids)["map50"]
            return (float(m), -loss)
        return (-loss,)

"""The adapter's metric on a validation loader, exact across ranks: top-1 or mAP@0.5.

Classification counts correct predictions on each rank and sums the counts over ranks.
Detection decodes each rank's shard with ``adapter.decode`` and gathers every prediction on
rank 0, which scores them once with :func:`detprune.eval.evaluate` (mAP is not an average of per-rank
mAPs); the result is broadcast so every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from detprune.errors import DetpruneError
from detprune.eval.evaluate import evaluate_detections, predict
from detprune.training import distributed as D

#: the metric each task reports and ranks checkpoints by (higher is better)
PRIMARY_METRIC = {"classification": "top1", "detection": "map50"}


def primary_metric(adapter: Any) -> str:
    task = getattr(adapter, "task", None)
    if task not in PRIMARY_METRIC:
        raise DetpruneError(
            f"adapter {type(adapter).__name__} has task {task!r}; expected 'classification' or 'detection'"
        )
    return PRIMARY_METRIC[task]


@torch.no_grad()
def validate(
    model: nn.Module,
    adapter: Any,
    loader: Iterable[Any],
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` (in eval mode; restored afterwards) with ``adapter``'s task metric."""
    was_training = model.training
    model.eval()
    try:
        if primary_metric(adapter) == "top1":
            return _classification(model, adapter, loader, device, autocast_dtype, channels_last, progress)
        return _detection(model, adapter, loader, device, autocast_dtype, channels_last, progress)
    finally:
        model.train(was_training)


def _classification(model, adapter, loader, device, dtype, channels_last, progress) -> dict[str, float]:
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, seen, loss * seen
    for images, labels, *_ in _batches(loader, progress):
        images, labels = to_device(images, device, channels_last), labels.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = model(images)
        logits = logits.float()
        loss, _ = adapter.loss(logits, labels)
        sums += torch.stack(
            [
                (logits.argmax(1) == labels).sum().double(),
                torch.tensor(float(labels.numel()), dtype=torch.float64, device=device),
                loss.detach().double() * labels.numel(),
            ]
        )
    correct, seen, loss_sum = D.all_reduce_sum(sums).tolist()
    if seen == 0:
        raise DetpruneError("the validation set is empty")
    return {"top1": correct / seen, "val_loss": loss_sum / seen}


def _detection(
    model, adapter, loader, device, dtype, channels_last, progress, conf=0.1, nms_iou=0.5, max_det=500
) -> dict[str, float]:
    runner = _Forward(model, device, dtype, channels_last)
    predictions = predict(
        runner,
        adapter,
        loader,
        conf=conf,
        nms_iou=nms_iou,
        max_det=max_det,
        device=device,
        progress=progress and D.is_main(),
    )
    gathered = D.all_gather_objects(predictions)
    result = None
    if D.is_main():
        result = score_detections([p for part in gathered for p in part], getattr(loader, "dataset", None))
    return D.broadcast_object(result)


class _Forward(nn.Module):
    """Runs the model under autocast (and channels_last) and hands fp32 outputs to ``decode``:
    box coordinates decoded in bf16 would be off by pixels at 608."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.model, self.device, self.dtype, self.channels_last = model, device, dtype, channels_last

    def forward(self, images: torch.Tensor) -> Any:
        with autocast(self.device, self.dtype):
            out = self.model(to_device(images, self.device, self.channels_last))
        return to_float32(out) if self.dtype is not None else out


def score_detections(predictions: list[dict[str, Any]], dataset: Any) -> dict[str, float]:
    """mAP@0.5 of ``predictions`` against ``dataset``'s ground truth (``detprune.eval.evaluate``).

    The one place the Trainer meets the evaluator; only scalar results are kept for metrics.csv.
    """
    if dataset is None or not hasattr(dataset, "coco_gt"):
        raise DetpruneError("detection validation needs a loader over a detprune detection dataset (with coco_gt())")
    result = evaluate_detections(predictions, dataset)
    keep = ("map50", "map50_500", "map")
    return {k: float(result[k]) for k in keep if isinstance(result.get(k), (int, float))}


# ---- helpers shared with the training loop -----------------------------------------------------
def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``; a no-op context when AMP is off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=fmt)


def to_float32(obj: Any) -> Any:
    """Cast floating tensors in nested outputs to fp32, so losses and decoding run in full precision."""
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_float32(o) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float32(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_float32(v) for k, v in obj.items()}
    return obj


def _batches(loader: Iterable[Any], progress: bool) -> Iterable[Any]:
    total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    return tqdm(loader, total=total, desc="evaluate", leave=False, disable=not (progress and D.is_main()))


EvaluateFn = Callable[[nn.Module, Iterable[Any]], dict[str, float]]

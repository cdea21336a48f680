"""Scoring: mAP@0.5 for detectors (pycocotools, VisDrone rules), top-1 for classifiers.

Detection follows ../shared/research/algorithms.md §8 (COCO json + pycocotools recipe): ignored
regions are ``iscrowd`` boxes in every class, category 11 is dropped, maxDets 100 and 500. The seed
papers' run settings are the defaults of :func:`evaluate_model`: confidence 0.1, NMS IoU 0.5 (input
608 is the dataset's). Results are COCO-style numbers (101-point AP, per-class maxDets), not the
VisDrone MATLAB toolkit's; ``protocol`` in every result says so.

The module is callable: ``detprune.eval.evaluate(model, loader, adapter)`` equals :func:`evaluate`.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from detprune.errors import DataFormatError
from detprune.eval.metrics_coco import coco_map

PROTOCOL = "COCO-style mAP (pycocotools, 101-point) with VisDrone ignored regions as crowd; maxDets 100 and 500"


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def predictions_to_rows(
    predictions: Iterable[dict[str, Any]], category_ids: Sequence[int], valid_ids: set[int] | None = None
) -> np.ndarray:
    """Prediction dicts -> ``[N, 7]`` rows ``(image_id, x, y, w, h, score, category_id)``."""
    chunks = []
    n_cls = len(category_ids)
    cats = np.asarray(category_ids, dtype=np.float64)
    for k, p in enumerate(predictions):
        img = int(p["image_id"])
        if valid_ids is not None and img not in valid_ids:
            raise DataFormatError(f"prediction {k}: image_id {img} is not an image of the ground truth")
        boxes = _np(p["boxes"]).reshape(-1, 4)
        scores = _np(p["scores"]).reshape(-1)
        labels = _np(p["labels"]).reshape(-1).astype(np.int64)
        if not len(boxes) == len(scores) == len(labels):
            raise DataFormatError(
                f"prediction {k} (image {img}): {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= n_cls):
            raise DataFormatError(f"prediction {k} (image {img}): label {int(labels.max())} is outside 0..{n_cls - 1}")
        rows = np.empty((len(boxes), 7))
        rows[:, 0] = img
        rows[:, 1:3] = boxes[:, 0:2]
        rows[:, 3:5] = boxes[:, 2:4] - boxes[:, 0:2]
        rows[:, 5] = scores
        rows[:, 6] = cats[labels] if len(labels) else 0
        chunks.append(rows)
    return np.concatenate(chunks) if chunks else np.zeros((0, 7))


def evaluate_detections(
    predictions: Iterable[dict[str, Any]],
    gt,
    *,
    category_ids: Sequence[int] | None = None,
    iou_range: bool = True,
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """mAP of prediction dicts (docs/internals.md §3) against ``gt``: a detection dataset (its
    cached ``coco_gt()``), a ``torch.utils.data.Subset`` of one (scored on its images only) or a
    pycocotools ``COCO``. Label ``i`` is category ``category_ids[i]`` (default: the dataset's, else
    the GT category ids in increasing order). ``image_ids`` restricts scoring to those images."""
    if isinstance(gt, Subset) and hasattr(gt.dataset, "coco_gt"):
        sub_ids = [gt.dataset.records[i].image_id for i in gt.indices]
        image_ids = sub_ids if image_ids is None else [i for i in image_ids if i in set(sub_ids)]
        gt = gt.dataset
    coco = gt.coco_gt() if hasattr(gt, "coco_gt") else gt
    if category_ids is None:
        category_ids = getattr(gt, "category_ids", None) or sorted(c["id"] for c in coco.dataset["categories"])
    predictions = list(predictions)
    rows = predictions_to_rows(predictions, category_ids, set(coco.getImgIds()))
    out = coco_map(coco, rows, iou_range=iou_range, image_ids=image_ids)
    n_images = len(set(image_ids)) if image_ids is not None else len(coco.getImgIds())
    out.update(images=n_images, detections=int(len(rows)), protocol=PROTOCOL)
    return out


def _decode_kwargs(decode, conf: float, nms_iou: float, max_det: int) -> dict[str, Any]:
    """The threshold keywords ``adapter.decode`` accepts (it may take none of them)."""
    try:
        params = inspect.signature(decode).parameters
    except (TypeError, ValueError):
        return {}
    offered = {"conf": conf, "nms_iou": nms_iou, "max_det": max_det}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    return {k: v for k, v in offered.items() if k in params}


def _device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    adapter,
    loader: Iterable,
    *,
    conf: float = 0.1,
    nms_iou: float = 0.5,
    max_det: int = 500,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run a detector over ``loader`` and decode: one prediction dict per image, in original pixels.

    ``adapter.decode(outputs, metas)`` gets ``conf``/``nms_iou``/``max_det`` when its signature takes
    them; scores below ``conf`` and detections past ``max_det`` per image are dropped here either way.
    """
    from tqdm import tqdm

    dev = _device(model, device)
    was_training = model.training
    model.eval()
    kwargs = _decode_kwargs(adapter.decode, conf, nms_iou, max_det)
    preds: list[dict[str, Any]] = []
    try:
        for images, _targets, metas in tqdm(
            loader, desc="eval", unit="batch", leave=False, disable=not progress or None
        ):
            outputs = model(images.to(dev, non_blocking=True))
            decoded = adapter.decode(outputs, metas, **kwargs)
            for det, meta in zip(decoded, metas):
                scores = det["scores"].detach().float().cpu()
                keep = torch.nonzero(scores >= conf).flatten()
                keep = keep[scores[keep].argsort(descending=True)[:max_det]]
                preds.append(
                    {
                        "image_id": meta["image_id"],
                        "boxes": det["boxes"].detach().cpu()[keep],
                        "scores": scores[keep],
                        "labels": det["labels"].detach().cpu()[keep],
                    }
                )
    finally:
        model.train(was_training)
    return preds


def evaluate_model(
    model: torch.nn.Module,
    adapter,
    loader,
    *,
    conf: float = 0.1,
    nms_iou: float = 0.5,
    max_det: int = 500,
    device: str | torch.device | None = None,
    gt=None,
    iou_range: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict with ``model`` + ``adapter`` over ``loader`` and score against ``gt`` (default: the
    loader's dataset). Metric keys as :func:`evaluate_detections`, plus ``conf`` and ``nms_iou``."""
    gt = gt if gt is not None else getattr(loader, "dataset", None)
    base = gt.dataset if isinstance(gt, Subset) else gt
    if base is None or not (hasattr(base, "coco_gt") or hasattr(base, "getImgIds")):
        raise DataFormatError("evaluate_model needs ground truth: a loader over a detprune detection dataset, or gt=")
    preds = predict(
        model, adapter, loader, conf=conf, nms_iou=nms_iou, max_det=max_det, device=device, progress=progress
    )
    out = evaluate_detections(preds, gt, iou_range=iou_range)
    out.update(conf=conf, nms_iou=nms_iou)
    return out


@torch.inference_mode()
def evaluate_classifier(
    model: torch.nn.Module, loader: Iterable, *, device: str | torch.device | None = None, progress: bool = True
) -> dict[str, Any]:
    """Top-1 accuracy (fraction, 0..1) over ``(images, labels)`` batches."""
    from tqdm import tqdm

    dev = _device(model, device)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in tqdm(loader, desc="eval", unit="batch", leave=False, disable=not progress or None):
            out = model(images.to(dev, non_blocking=True))
            logits = out[0] if isinstance(out, (tuple, list)) else out
            labels = torch.as_tensor(labels).to(logits.device)
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += int(labels.numel())
    finally:
        model.train(was_training)
    return {"top1": correct / total if total else 0.0, "images": total}


def evaluate(
    model: torch.nn.Module | None = None,
    loader: Iterable | None = None,
    adapter=None,
    *,
    predictions: Iterable[dict[str, Any]] | None = None,
    gt=None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One entry point: predictions + gt -> mAP; a detector adapter -> mAP; otherwise top-1."""
    if predictions is not None:
        return evaluate_detections(predictions, gt if gt is not None else getattr(loader, "dataset", None), **kwargs)
    if model is None or loader is None:
        raise TypeError("evaluate() needs model and loader, or predictions and gt")
    if adapter is not None and getattr(adapter, "task", "detection") == "detection":
        return evaluate_model(model, adapter, loader, gt=gt, **kwargs)
    return evaluate_classifier(model, loader, **kwargs)


class _CallableModule(types.ModuleType):
    """``detprune.eval.evaluate`` is this module once imported; calling it runs :func:`evaluate`."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

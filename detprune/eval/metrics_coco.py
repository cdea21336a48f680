"""mAP through pycocotools, quietly and fast enough to run every epoch.

The protocol is COCO's (101-point interpolated AP, per-class maxDets) with two VisDrone changes
from ../shared/research/algorithms.md §8: maxDets ``[1, 10, 100, 500]`` and ignored regions as
``iscrowd`` GT boxes in every class (built by the dataset). pycocotools' ``summarize()`` reads AP
at ``maxDets=100`` only, so every number is read straight from ``eval['precision']`` (dims
``[T, R, K, A, M]``), averaging the entries > -1 exactly as ``COCOeval._summarize`` does.
Only the ``all`` area range is evaluated: the others are never reported and cost 3x the time.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

MAX_DETS = (1, 10, 100, 500)


def results_coco(gt, dets: np.ndarray):
    """A results ``COCO`` from ``[N, 7]`` rows ``(image_id, x, y, w, h, score, category_id)``.

    Same fields as ``COCO.loadRes`` writes for boxes (area = w*h, iscrowd 0), built directly so that
    an empty result set works and no deep copy is made.
    """
    from pycocotools.coco import COCO

    res = COCO()
    anns = [
        {
            "id": i + 1,
            "image_id": int(r[0]),
            "bbox": [float(r[1]), float(r[2]), float(r[3]), float(r[4])],
            "score": float(r[5]),
            "category_id": int(r[6]),
            "area": float(r[3] * r[4]),
            "iscrowd": 0,
        }
        for i, r in enumerate(dets)
    ]
    res.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _mean(p: np.ndarray) -> float:
    v = p[p > -1]
    return float(v.mean()) if v.size else -1.0


def coco_map(
    gt,
    dets: np.ndarray,
    class_names: dict[int, str] | None = None,
    iou_range: bool = True,
    image_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Score ``dets`` (``[N, 7]``, see :func:`results_coco`) against the ``COCO`` ``gt``.

    Returns ``map50`` (AP@0.5, maxDets 100), ``map50_500`` (maxDets 500), ``map`` (AP@[.5:.95],
    maxDets 100), ``map_500`` and ``per_class`` / ``per_class_500`` (name -> AP@0.5; ``None`` for a
    class without ground truth). ``iou_range=False`` evaluates IoU 0.5 only (``map`` is then -1);
    ``image_ids`` restricts scoring to those images (default: every GT image).
    """
    from pycocotools.cocoeval import COCOeval

    res = results_coco(gt, dets)
    ev = COCOeval(gt, res, iouType="bbox")
    ev.params.maxDets = list(MAX_DETS)
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    if image_ids is not None:
        ev.params.imgIds = sorted(set(int(i) for i in image_ids))
    if not iou_range:
        ev.params.iouThrs = np.array([0.5])
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]  # [T, R, K, A, M]
    t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    m100, m500 = MAX_DETS.index(100), MAX_DETS.index(500)
    cats = ev.params.catIds
    names = class_names or {c["id"]: c["name"] for c in gt.dataset["categories"]}
    out: dict[str, Any] = {
        "map50": _mean(prec[t50, :, :, 0, m100]),
        "map50_500": _mean(prec[t50, :, :, 0, m500]),
        "map": _mean(prec[:, :, :, 0, m100]) if iou_range else -1.0,
        "map_500": _mean(prec[:, :, :, 0, m500]) if iou_range else -1.0,
    }
    for key, m in (("per_class", m100), ("per_class_500", m500)):
        per = {}
        for k, cid in enumerate(cats):
            v = _mean(prec[t50, :, k, 0, m])
            per[names.get(cid, str(cid))] = None if v == -1.0 else v
        out[key] = per
    return out

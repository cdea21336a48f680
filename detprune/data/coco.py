"""COCO-JSON detection datasets (``instances_*.json`` + an image folder; the coco128 layout).

Class ``i`` is the ``i``-th card class; its category id is looked up by name in the JSON (or the
card maps ids itself). ``iscrowd`` objects are no target and stay ``iscrowd`` in the evaluation
ground truth; image and category ids are kept, so a COCO results JSON scores as is. Boxes of zero
size are dropped and counted; a malformed entry raises an error naming the file, the entry and the
field (JSON has no useful line numbers once parsed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detprune.data.detection import DetectionDataset, ImageRecord
from detprune.data.report import DataReport
from detprune.errors import DataFormatError

_EDGE_TOLERANCE = 1.0  # px: COCO boxes overshoot the image edge by float rounding; clip those


class CocoDataset(DetectionDataset):
    def __init__(self, images_dir: str | Path, annotation_file: str | Path, classes: Sequence[str] | None = None,
                 category_ids: Sequence[int] | None = None, *, lenient: bool = False, img_size: int | None = None,
                 train: bool = False, transform=None):
        ann = Path(annotation_file)
        try:
            data = json.loads(ann.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DataFormatError(f"{ann}: cannot read COCO annotations: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise DataFormatError(f"{ann}: not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DataFormatError(f"{ann}: expected a JSON object with images, annotations and categories")
        cats = _categories(data, ann)
        if category_ids is None:
            if classes is None:
                category_ids = sorted(cats)
            else:
                by_name = {v: k for k, v in cats.items()}
                missing = [c for c in classes if c not in by_name]
                if missing:
                    raise DataFormatError(f"{ann}: field 'categories': classes {missing} of the card are not in the JSON")
                category_ids = [by_name[c] for c in classes]
        category_ids = list(category_ids)
        classes = list(classes) if classes is not None else [cats[i] for i in category_ids]
        records, report = _index(data, ann, Path(images_dir), category_ids, lenient)
        super().__init__(records, classes, category_ids, img_size=img_size, train=train, transform=transform,
                         report=report, name=str(ann))
        report.warn_losses(str(ann))


def _categories(data: dict[str, Any], ann: Path) -> dict[int, str]:
    cats = data.get("categories")
    if not isinstance(cats, list):
        raise DataFormatError(f"{ann}: field 'categories' is missing or not a list")
    out = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DataFormatError(f"{ann}: categories[{i}]: needs an integer 'id' and a 'name'")
        out[c["id"]] = str(c["name"])
    return out


def _index(data: dict[str, Any], ann: Path, images_dir: Path, category_ids: list[int],
           lenient: bool) -> tuple[list[ImageRecord], DataReport]:
    report = DataReport(files=1)
    imgs = data.get("images")
    anns = data.get("annotations")
    if not isinstance(imgs, list) or not isinstance(anns, list):
        raise DataFormatError(f"{ann}: fields 'images' and 'annotations' must be lists")
    records: dict[int, ImageRecord] = {}
    for i, im in enumerate(imgs):
        where = f"{ann}: images[{i}]"
        if not isinstance(im, dict):
            raise DataFormatError(f"{where}: not an object")
        for key, typ in (("id", int), ("file_name", str), ("height", int), ("width", int)):
            if not isinstance(im.get(key), typ):
                raise DataFormatError(f"{where}: field '{key}': missing or not {typ.__name__}")
        path = images_dir / im["file_name"]
        if not path.is_file():
            msg = f"{where}: image file {path} not found"
            if not lenient:
                raise DataFormatError(msg)
            report.skipped_images.append(msg)
            continue
        records[im["id"]] = ImageRecord(im["id"], path, (im["height"], im["width"]))
    known_ids = {im["id"] for im in imgs}
    label_of = {cid: k for k, cid in enumerate(category_ids)}
    per: dict[int, tuple[list, list, list, list]] = {k: ([], [], [], []) for k in records}
    for i, a in enumerate(anns):
        where = f"{ann}: annotations[{i}]" + (f" (id {a.get('id')})" if isinstance(a, dict) else "")
        try:
            box, img_id, cat, crowd = _check_ann(a, known_ids)
        except ValueError as exc:
            if not lenient:
                raise DataFormatError(f"{where}: {exc}") from None
            report.skipped.append(f"{where}: {exc}")
            continue
        report.lines += 1
        report.categories[cat] += 1
        if img_id not in records:
            continue  # its image was skipped (lenient) and is already reported
        h, w = records[img_id].size
        x, y, bw, bh = box
        if bw <= 0 or bh <= 0:
            report.dropped_zero_size.append(where)
            continue
        if x < -_EDGE_TOLERANCE or y < -_EDGE_TOLERANCE or x + bw > w + _EDGE_TOLERANCE or y + bh > h + _EDGE_TOLERANCE:
            msg = f"{where}: field 'bbox': {box} is outside the {w}x{h} image"
            if not lenient:
                raise DataFormatError(msg)
            report.skipped.append(msg)
            continue
        xyxy = [max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)]
        if cat not in label_of:
            report.not_targets[cat] += 1
            continue
        b, l, ib, il = per[img_id]
        (ib if crowd else b).append(xyxy)
        (il if crowd else l).append(label_of[cat])
    out = []
    for img_id, rec in records.items():
        b, l, ib, il = per[img_id]
        rec.boxes, rec.labels = np.asarray(b, np.float32).reshape(-1, 4), np.asarray(l, np.int64)
        rec.ignore, rec.ignore_labels = np.asarray(ib, np.float32).reshape(-1, 4), np.asarray(il, np.int64)
        report.boxes += len(b)
        report.ignored_regions += len(ib)
        out.append(rec)
    report.images = len(out)
    return out, report


def _check_ann(a: Any, known_ids: set[int]) -> tuple[list[float], int, int, int]:
    if not isinstance(a, dict):
        raise ValueError("not an object")
    img_id, cat, bbox = a.get("image_id"), a.get("category_id"), a.get("bbox")
    if not isinstance(img_id, int):
        raise ValueError(f"field 'image_id': {img_id!r} is not an integer")
    if img_id not in known_ids:
        raise ValueError(f"field 'image_id': {img_id} is not the id of an image in this file")
    if not isinstance(cat, int):
        raise ValueError(f"field 'category_id': {cat!r} is not an integer")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)):
        raise ValueError(f"field 'bbox': {bbox!r} is not [x, y, width, height]")
    crowd = a.get("iscrowd", 0)
    if crowd not in (0, 1):
        raise ValueError(f"field 'iscrowd': {crowd!r} is not 0 or 1")
    return [float(v) for v in bbox], img_id, cat, int(crowd)

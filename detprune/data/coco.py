"""COCO-JSON detection datasets (``instances_*.json`` + an image folder; the coco128 layout).

Class ``i`` is the ``i``-th card class; its category id is looked up by name in the JSON (or the
card maps ids itself). ``iscrowd`` objects are no target and stay ``iscrowd`` in the evaluation
ground truth; image and category ids are kept, so a COCO results JSON scores as is. Boxes of zero
size are dropped and counted; a malformed entry raises an error naming the file, the entry and the
field (JSON has no useful line numbers once parsed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detprune.data.checks import (
    coco_categories,
    finite_number,
    json_int,
    json_str,
    read_json,
    show_json,
)
from detprune.data.detection import DetectionDataset, ImageRecord
from detprune.data.report import DataReport
from detprune.errors import DataFormatError

_EDGE_TOLERANCE = 1.0  # px: COCO boxes overshoot the image edge by float rounding; clip those


class CocoDataset(DetectionDataset):
    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        classes: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
        *,
        lenient: bool = False,
        img_size: int | None = None,
        train: bool = False,
        transform=None,
    ):
        ann = Path(annotation_file)
        data = read_json(ann, "COCO annotations")
        if not isinstance(data, dict):
            raise DataFormatError(f"{ann}: expected a JSON object with images, annotations and categories")
        cats = coco_categories(data, ann)
        if category_ids is None:
            category_ids = sorted(cats) if classes is None else _ids_by_name(cats, classes, ann)
        category_ids = list(category_ids)
        classes = list(classes) if classes is not None else [cats[i] for i in category_ids]
        records, report = _index(data, ann, Path(images_dir), category_ids, lenient)
        super().__init__(
            records,
            classes,
            category_ids,
            img_size=img_size,
            train=train,
            transform=transform,
            report=report,
            name=str(ann),
        )
        report.warn_losses(str(ann))


def _ids_by_name(cats: dict[int, str], classes: Sequence[str], ann: Path) -> list[int]:
    """Category id of each card class; a name two categories share would pick one of them silently."""
    ids_of: dict[str, list[int]] = {}
    for cid, name in cats.items():
        ids_of.setdefault(name, []).append(cid)
    missing = [c for c in classes if c not in ids_of]
    if missing:
        raise DataFormatError(f"{ann}: field 'categories': classes {missing} of the card are not in the JSON")
    for c in classes:
        if len(ids_of[c]) > 1:
            raise DataFormatError(
                f"{ann}: field 'categories': class {c!r} of the card is the name of categories "
                f"{ids_of[c]}; map ids to names in the card's classes instead"
            )
    return [ids_of[c][0] for c in classes]


def _index(
    data: dict[str, Any], ann: Path, images_dir: Path, category_ids: list[int], lenient: bool
) -> tuple[list[ImageRecord], DataReport]:
    report = DataReport(files=1)
    imgs = data.get("images")
    anns = data.get("annotations")
    if not isinstance(imgs, list) or not isinstance(anns, list):
        raise DataFormatError(f"{ann}: fields 'images' and 'annotations' must be lists")
    records: dict[int, ImageRecord] = {}
    first: dict[int, int] = {}  # image id -> index of the entry that has it
    for i, im in enumerate(imgs):
        where = f"{ann}: images[{i}]"
        if not isinstance(im, dict):
            raise DataFormatError(f"{where}: not an object")
        try:
            img_id, file_name = json_int(im, "id"), json_str(im, "file_name")
            h, w = json_int(im, "height"), json_int(im, "width")
        except ValueError as exc:
            raise DataFormatError(f"{where}: {exc}") from None
        for key, v in (("height", h), ("width", w)):
            if v <= 0:
                raise DataFormatError(f"{where}: field '{key}': {v} is not positive")
        if img_id in first:  # its boxes would land on the other image
            raise DataFormatError(f"{where}: field 'id': {img_id} is also the id of images[{first[img_id]}]")
        first[img_id] = i
        path = images_dir / file_name
        if not path.is_file():
            msg = f"{where}: image file {path} not found"
            if not lenient:
                raise DataFormatError(msg)
            report.skipped_images.append(msg)
            continue
        records[img_id] = ImageRecord(img_id, path, (h, w))
    known_ids = set(first)
    label_of = {cid: k for k, cid in enumerate(category_ids)}
    per: dict[int, tuple[list, list, list, list]] = {k: ([], [], [], []) for k in records}
    for i, a in enumerate(anns):
        where = f"{ann}: annotations[{i}]"
        if isinstance(a, dict) and "id" in a:
            where += f" (id {show_json(a['id'])})"
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
        b, labels, ib, il = per[img_id]
        (ib if crowd else b).append(xyxy)
        (il if crowd else labels).append(label_of[cat])
    out = []
    for img_id, rec in records.items():
        b, labels, ib, il = per[img_id]
        rec.boxes, rec.labels = np.asarray(b, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)
        rec.ignore, rec.ignore_labels = np.asarray(ib, np.float32).reshape(-1, 4), np.asarray(il, np.int64)
        report.boxes += len(b)
        report.ignored_regions += len(ib)
        out.append(rec)
    report.images = len(out)
    return out, report


def _check_ann(a: Any, known_ids: set[int]) -> tuple[list[float], int, int, int]:
    if not isinstance(a, dict):
        raise ValueError("not an object")
    if "id" in a:
        json_int(a, "id")
    img_id = json_int(a, "image_id")
    if img_id not in known_ids:
        raise ValueError(f"field 'image_id': {img_id} is not the id of an image in this file")
    cat, bbox = json_int(a, "category_id"), a.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) for v in bbox)):
        raise ValueError(f"field 'bbox': {_cut(repr(bbox))} is not [x, y, width, height]")
    crowd = a.get("iscrowd", 0)
    if isinstance(crowd, bool) or crowd not in (0, 1):
        raise ValueError(f"field 'iscrowd': {show_json(crowd)} is not 0 or 1")
    return [float(v) for v in bbox], img_id, cat, int(crowd)


def _cut(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."

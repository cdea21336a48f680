"""Reading detections to score: a COCO results JSON, or a folder of VisDrone result ``.txt`` files.

Both become the prediction dicts of docs/internals.md §3 (``image_id``, ``boxes`` xyxy original
pixels, ``scores``, ``labels`` 0-based). VisDrone result files (toolkit ``readme``) use the
annotation fields with score = confidence and truncation = occlusion = -1, one file per image, named
like the image. Results in categories that are no class (0, 11) are skipped and counted; an
image with no result file counts as an image with no detection and is counted, not hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detprune.data.checks import finite_number, read_json, show_json
from detprune.errors import DataFormatError

_FIELDS = ("left", "top", "width", "height", "score", "category", "truncation", "occlusion")


@dataclass
class Predictions:
    items: list[dict[str, Any]]
    skipped_categories: dict[int, int] = field(default_factory=dict)  # category id -> detections
    images_without_results: list[str] = field(default_factory=list)


def read_predictions(path: str | Path, dataset) -> Predictions:
    """A COCO results ``.json`` file or a folder of VisDrone result ``.txt`` files."""
    p = Path(path)
    if p.is_dir():
        return read_visdrone_results(p, dataset)
    if p.is_file():
        return read_coco_results(p, dataset)
    raise DataFormatError(f"{p}: no such predictions file or folder")


def _label_of(dataset) -> dict[int, int]:
    return {cid: i for i, cid in enumerate(dataset.category_ids)}


def _group(rows: list[tuple[int, float, float, float, float, float, int]], dataset) -> list[dict[str, Any]]:
    by_img: dict[int, list] = {r.image_id: [] for r in dataset.records}
    for r in rows:
        by_img[r[0]].append(r)
    out = []
    for img_id, rs in by_img.items():
        a = np.asarray([r[1:] for r in rs], np.float64).reshape(-1, 6)
        boxes = np.concatenate([a[:, 0:2], a[:, 0:2] + a[:, 2:4]], axis=1)
        out.append({"image_id": img_id, "boxes": boxes, "scores": a[:, 4], "labels": a[:, 5].astype(np.int64)})
    return out


def read_coco_results(path: Path, dataset) -> Predictions:
    """``[{image_id, category_id, bbox [x, y, w, h], score}, ...]``; ``image_id`` may also be the
    image's file name or stem (VisDrone ids are assigned by detprune, names are not)."""
    data = read_json(path, "predictions")
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: a COCO results file is a JSON list of detections, got {type(data).__name__}")
    ids = {r.image_id for r in dataset.records}
    label_of = _label_of(dataset)
    rows, skipped = [], {}
    for i, d in enumerate(data):
        where = f"{path}: [{i}]"
        if not isinstance(d, dict):
            raise DataFormatError(f"{where}: not an object")
        img = raw = d.get("image_id")
        if isinstance(img, str):
            img = dataset.image_id_of(img)
            if img is None:
                raise DataFormatError(f"{where}: field 'image_id': {show_json(raw)} names no image of the dataset")
        if isinstance(img, bool) or not isinstance(img, int) or img not in ids:  # true is no image 1
            raise DataFormatError(f"{where}: field 'image_id': {show_json(raw)} is not an image of the dataset")
        cat, bbox, score = d.get("category_id"), d.get("bbox"), d.get("score")
        if isinstance(cat, bool) or not isinstance(cat, int):
            raise DataFormatError(f"{where}: field 'category_id': {show_json(cat)} is not an integer")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) for v in bbox)):
            raise DataFormatError(f"{where}: field 'bbox': {show_json(bbox)} is not [x, y, width, height]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DataFormatError(f"{where}: field 'bbox': negative width or height in {bbox}")
        if not finite_number(score):
            raise DataFormatError(f"{where}: field 'score': {show_json(score)} is not a finite number")
        if cat not in label_of:
            skipped[cat] = skipped.get(cat, 0) + 1
            continue
        rows.append((img, *(float(v) for v in bbox), float(score), label_of[cat]))
    return Predictions(_group(rows, dataset), skipped)


def read_visdrone_results(folder: Path, dataset) -> Predictions:
    """One ``<image stem>.txt`` per image: ``left,top,width,height,score,category,-1,-1`` lines."""
    label_of = _label_of(dataset)
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".txt"}
    if not files:
        raise DataFormatError(f"{folder}: no VisDrone result .txt files in this folder")
    rows, skipped, missing = [], {}, []
    for stem, p in files.items():
        img = dataset.image_id_of(stem)
        if img is None:
            raise DataFormatError(
                f"{p}: no image named '{stem}' in the dataset (result files are named like the images)"
            )
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{p}: cannot read result file: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            vals = _result_line(line, f"{p}:{lineno}")
            cat = int(vals[5])
            if cat not in label_of:
                skipped[cat] = skipped.get(cat, 0) + 1
                continue
            rows.append((img, *vals[:5], label_of[cat]))
    missing = [r.path.name for r in dataset.records if r.path.stem not in files]
    return Predictions(_group(rows, dataset), skipped, missing)


def _result_line(line: str, where: str) -> list[float]:
    parts = line.split(",")
    if len(parts) == len(_FIELDS) + 1 and not parts[-1].strip():
        parts = parts[:-1]
    if len(parts) != len(_FIELDS):
        raise DataFormatError(
            f"{where}: expected {len(_FIELDS)} comma-separated fields ({','.join(_FIELDS)}), got {len(parts)}"
        )
    vals = []
    for name, raw in zip(_FIELDS, parts):
        try:
            v = float(raw)
        except ValueError:
            raise DataFormatError(f"{where}: field '{name}': {raw.strip()[:40]!r} is not a number") from None
        if not math.isfinite(v):
            raise DataFormatError(f"{where}: field '{name}': {raw.strip()[:40]!r} is not finite")
        vals.append(v)
    for name in ("width", "height"):
        if vals[_FIELDS.index(name)] < 0:
            raise DataFormatError(f"{where}: field '{name}': {vals[_FIELDS.index(name)]:g} is negative")
    if vals[5] != int(vals[5]):
        raise DataFormatError(f"{where}: field 'category': {vals[5]:g} is not an integer")
    return vals

"""VisDrone2019-DET datasets: ``images/`` + ``annotations/`` (one ``.txt`` per image).

Classes are categories named by the card (VisDrone: 1..10 -> labels 0..9). Category 0 is an
ignored region for every class; in ground truth a score of 0 marks an object the toolkit ignores
(only categories 0 and 11 carry it in the official files); category 11 ("others") and categories
the card does not list are no target, counted in the report (algorithms.md §8). Files are
validated at construction, image sizes read from headers, so errors surface before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detprune.data.detection import ALL_CLASSES, DetectionDataset, ImageRecord
from detprune.data.images import find_images, image_size
from detprune.data.report import DataReport
from detprune.data.visdrone_parse import VISDRONE_CLASSES, read_annotation_file
from detprune.errors import DataFormatError

IGNORED_REGION = 0


class VisDroneDataset(DetectionDataset):
    """One split folder. ``images_dir`` may be absent (annotation-only: it can be scored, not read)."""

    def __init__(
        self,
        split_dir: str | Path,
        classes: Sequence[str] = VISDRONE_CLASSES,
        category_ids: Sequence[int] | None = None,
        *,
        annotations_dir: str | Path | None = None,
        images_dir: str | Path | None = None,
        display_root: str | Path | None = None,
        lenient: bool = False,
        img_size: int | None = None,
        train: bool = False,
        transform=None,
    ):
        split_dir = Path(split_dir)
        ann_dir = Path(annotations_dir) if annotations_dir else split_dir / "annotations"
        img_dir = Path(images_dir) if images_dir else split_dir / "images"
        category_ids = list(category_ids) if category_ids is not None else list(range(1, len(classes) + 1))
        if len(category_ids) != len(classes):
            raise DataFormatError(f"{split_dir}: {len(classes)} classes but {len(category_ids)} category ids")
        base = Path(display_root) if display_root else split_dir
        records, report = index_split(ann_dir, img_dir, category_ids, base, lenient)
        super().__init__(
            records,
            list(classes),
            category_ids,
            img_size=img_size,
            train=train,
            transform=transform,
            report=report,
            name=str(split_dir),
        )
        report.warn_losses(str(split_dir))


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.relative_to(base))
    except ValueError:
        return str(p)


def index_split(
    ann_dir: Path, img_dir: Path, category_ids: list[int], base: Path, lenient: bool
) -> tuple[list[ImageRecord], DataReport]:
    """Pair images with annotation files, parse and validate every file."""
    if not ann_dir.is_dir():
        raise DataFormatError(f"{ann_dir}: annotation folder not found")
    report = DataReport()
    ann_files = {p.stem: p for p in sorted(ann_dir.iterdir()) if p.is_file() and p.suffix.lower() == ".txt"}
    images = find_images(img_dir) if img_dir.is_dir() else None
    stems = sorted(ann_files)
    if images is not None:
        for stem in sorted(set(images) - set(ann_files)):
            _problem(
                f"{_rel(images[stem], base)}: no annotation file {_rel(ann_dir / (stem + '.txt'), base)}",
                lenient,
                report,
            )
        for stem in sorted(set(ann_files) - set(images)):
            _problem(f"{_rel(ann_files[stem], base)}: no image {_rel(img_dir, base)}/{stem}.* for it", lenient, report)
        stems = sorted(set(ann_files) & set(images))
    label_of = {cid: i for i, cid in enumerate(category_ids)}
    records: list[ImageRecord] = []
    for stem in tqdm(
        stems,
        desc=f"index {_rel(ann_dir.parent, base.parent)}",
        unit="file",
        leave=False,
        disable=True if len(stems) < 500 else None,
    ):
        path = images[stem] if images is not None else img_dir / f"{stem}.jpg"
        try:
            size = image_size(path) if images is not None else (0, 0)
        except DataFormatError as exc:
            _problem(f"{_rel(path, base)}: {str(exc).split(': ', 1)[-1]}", lenient, report)
            continue
        rows = read_annotation_file(
            ann_files[stem],
            _rel(ann_files[stem], base),
            image_size=size if images is not None else None,
            lenient=lenient,
            report=report,
        )
        records.append(_record(len(records) + 1, path, size, rows, label_of, report))
    report.images = len(records)
    return records, report


def _problem(msg: str, lenient: bool, report: DataReport) -> None:
    if not lenient:
        raise DataFormatError(msg)
    report.skipped_images.append(msg)


def _record(
    image_id: int, path: Path, size: tuple[int, int], rows: np.ndarray, label_of: dict[int, int], report: DataReport
) -> ImageRecord:
    xyxy = np.concatenate([rows[:, 0:2], rows[:, 0:2] + rows[:, 2:4]], axis=1).astype(np.float32)
    score, cat = rows[:, 4], rows[:, 5]
    boxes, labels, ign, ign_labels = [], [], [], []
    for box, s, c in zip(xyxy, score, cat):
        c = int(c)
        if c in label_of:
            if s == 0:  # toolkit: a score-0 object is ignored, not a target
                ign.append(box)
                ign_labels.append(label_of[c])
            else:
                boxes.append(box)
                labels.append(label_of[c])
        elif c == IGNORED_REGION:
            ign.append(box)
            ign_labels.append(ALL_CLASSES)
        else:
            report.not_targets[c] += 1
    report.boxes += len(boxes)
    report.ignored_regions += len(ign)
    return ImageRecord(
        image_id,
        path,
        size,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        ignore=np.asarray(ign, np.float32).reshape(-1, 4),
        ignore_labels=np.asarray(ign_labels, np.int64),
    )

"""The detection dataset every format shares: records in, letterboxed samples and COCO GT out.

A format module (VisDrone, COCO) turns its files into :class:`ImageRecord` s; this class turns a
record into the sample of docs/internals.md §3 and the whole split into a pycocotools ``COCO``
ground truth (built once, cached: evaluation runs every epoch).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detprune.data.images import read_image
from detprune.data.report import DataReport
from detprune.data.transforms import DetectionTransform, to_tensor
from detprune.errors import DataFormatError

ALL_CLASSES = -1  # an ignored region that applies to every class (VisDrone category 0)


@dataclass
class ImageRecord:
    """One image and its boxes in original pixels (xyxy)."""

    image_id: int
    path: Path
    size: tuple[int, int]  # (h, w); (0, 0) when the image is absent (annotation-only folders)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # targets
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # 0-based
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # crowd/ignored
    ignore_labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # label or ALL_CLASSES


class DetectionDataset(Dataset):
    """Base class: subclasses fill ``records``, ``classes`` and ``category_ids``, then call super."""

    task = "detection"

    def __init__(
        self,
        records: list[ImageRecord],
        classes: list[str],
        category_ids: list[int],
        img_size: int | None = None,
        train: bool = False,
        transform: Any = None,
        report: DataReport | None = None,
        name: str = "",
    ):
        self.records = records
        self.classes = list(classes)
        self.category_ids = list(category_ids)  # label i <-> category_ids[i] in the GT
        self.img_size = img_size
        self.train = train
        self.report = report or DataReport()
        self.name = name
        if transform is None and img_size is not None:
            transform = DetectionTransform(img_size, train=train)
        self.transform = transform
        self._coco = None
        self._by_stem = {r.path.stem: r.image_id for r in records}

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_id_of(self, name: str) -> int | None:
        """Image id for a file name or stem (``0000001_02999_d_0000005`` / ``....jpg``)."""
        return self._by_stem.get(Path(name).stem if "." in name else name)

    def __getitem__(self, index: int):
        rec = self.records[index]
        if rec.size == (0, 0):
            raise DataFormatError(f"{rec.path}: this split has annotations but no images; it can be scored, not read")
        image = read_image(rec.path)
        if image.shape[:2] != rec.size:
            raise DataFormatError(
                f"{rec.path}: image is {image.shape[1]}x{image.shape[0]}, header said {rec.size[1]}x{rec.size[0]}"
            )
        meta = {"image_id": rec.image_id, "path": str(rec.path), "orig_size": rec.size}
        if self.transform is None:
            meta.update(scale=1.0, scale_xy=(1.0, 1.0), pad=(0.0, 0.0))
            return to_tensor(image), self._target(rec.boxes, rec.labels, rec.ignore), meta
        lb = self.transform(image, rec.boxes, rec.labels, rec.ignore)
        meta.update(scale=lb.scale, scale_xy=lb.scale_xy, pad=lb.pad)
        return lb.image, self._target(lb.boxes, lb.labels, lb.ignore), meta

    @staticmethod
    def _target(boxes: np.ndarray, labels: np.ndarray, ignore: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            "boxes": torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
            "ignore": torch.as_tensor(np.asarray(ignore, np.float32).reshape(-1, 4)),
        }

    # ---- evaluation ground truth -----------------------------------------------------------
    def coco_dict(self) -> dict[str, Any]:
        """GT as a COCO dict: ignored regions become ``iscrowd=1`` boxes (one per class when they
        apply to all classes), so pycocotools' crowd rule ignores detections on them."""
        images, anns = [], []
        n_cls = len(self.category_ids)
        for rec in self.records:
            h, w = rec.size
            images.append({"id": rec.image_id, "file_name": rec.path.name, "height": h, "width": w})
            for box, lab in zip(rec.boxes, rec.labels):
                anns.append(_ann(len(anns) + 1, rec.image_id, self.category_ids[int(lab)], box, 0))
            for box, lab in zip(rec.ignore, rec.ignore_labels):
                labs = range(n_cls) if lab == ALL_CLASSES else (int(lab),)
                for k in labs:
                    anns.append(_ann(len(anns) + 1, rec.image_id, self.category_ids[k], box, 1))
        cats = [{"id": cid, "name": name} for cid, name in zip(self.category_ids, self.classes)]
        return {"images": images, "annotations": anns, "categories": cats}

    def coco_gt(self):
        """The pycocotools ``COCO`` ground truth, built once per dataset."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self.coco_dict()
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco


def _ann(ann_id: int, image_id: int, cat: int, box: np.ndarray, crowd: int) -> dict[str, Any]:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": crowd,
    }

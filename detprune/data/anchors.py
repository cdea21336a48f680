"""YOLO anchor boxes by k-means over ground-truth box shapes with the 1 - IoU distance
(Redmon & Farhadi, YOLO9000, section 2 "Dimension Clusters": Euclidean k-means favours large
boxes; d(box, centroid) = 1 - IoU(box, centroid) with both centred at the origin does not).

Box shapes are scaled to the network input the way the letterbox does it: w * S / max(image h, w).
Image sizes come from the image headers when the images are there. Without images (the real
VisDrone val annotations in ../shared/data hold none) they are estimated: the frame of a video
sequence (file-name prefix before the first ``_``) is the smallest standard VisDrone frame that
holds every box of the sequence, or the boxes' extent when none does. The report says which.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detprune.data import build_dataset
from detprune.data.images import find_images, image_size
from detprune.data.visdrone_parse import read_annotation_file
from detprune.errors import DataFormatError

#: VisDrone2019-DET frame sizes (w, h), smallest first. 960x540, 1360x765 and 1920x1080 are the
#: frames of ../shared/data/visdrone-sample; the others are other camera modes of the dataset.
VISDRONE_FRAMES: tuple[tuple[int, int], ...] = (
    (960, 540),
    (1360, 765),
    (1400, 788),
    (1400, 1050),
    (1920, 1080),
    (2000, 1500),
)


def wh_iou(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """IoU of origin-centred boxes ``[N, 2]`` against centroids ``[K, 2]``: ``[N, K]``."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh[:, None].prod(2) + centroids[None].prod(2) - inter
    return inter / union


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """YOLO9000's "Avg IOU": mean over boxes of the IoU with their closest anchor."""
    return float(wh_iou(wh, anchors).max(1).mean())


def kmeans_anchors(
    wh: np.ndarray, n: int = 9, seed: int = 0, restarts: int = 10, max_iter: int = 300
) -> tuple[np.ndarray, float]:
    """``(anchors [n, 2] sorted by area, mean best IoU)``: Lloyd's k-means with d = 1 - IoU.

    Each restart seeds by k-means++ under the same distance; centroids move to the mean shape of
    their cluster; the restart with the highest mean best IoU wins. Identical shapes (box sizes
    are integer pixels) are clustered once, weighted by their count: the result is the same.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < n:
        raise DataFormatError(f"k-means needs at least {n} boxes with positive width and height, got {len(wh)}")
    shapes, weight = np.unique(wh, axis=0, return_counts=True)
    weight = weight.astype(np.float64)
    rng = np.random.default_rng(seed)
    best, best_iou = None, -1.0
    for _ in range(restarts):
        c = _kmeanspp(shapes, weight, n, rng)
        assign = None
        for _ in range(max_iter):
            new = wh_iou(shapes, c).argmax(1)
            if assign is not None and np.array_equal(new, assign):
                break
            assign = new
            mass = np.bincount(assign, weights=weight, minlength=n)
            for d in range(2):
                c[:, d] = np.bincount(assign, weights=weight * shapes[:, d], minlength=n) / np.maximum(mass, 1e-12)
            empty = mass == 0
            c[empty] = shapes[rng.integers(len(shapes), size=int(empty.sum()))]  # re-seed an empty cluster
        score = float(np.average(wh_iou(shapes, c).max(1), weights=weight))
        if score > best_iou:
            best, best_iou = c.copy(), score
    assert best is not None
    return best[np.argsort(best.prod(1), kind="stable")], best_iou


def _kmeanspp(shapes: np.ndarray, weight: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) under d = 1 - IoU, boxes weighted by count."""
    c = [shapes[rng.choice(len(shapes), p=weight / weight.sum())]]
    d = 1.0 - wh_iou(shapes, np.array(c))[:, 0]
    for _ in range(1, n):
        p = weight * d**2
        idx = rng.choice(len(shapes), p=p / p.sum()) if p.sum() > 0 else rng.integers(len(shapes))
        c.append(shapes[idx])
        d = np.minimum(d, 1.0 - wh_iou(shapes, np.array(c[-1:]))[:, 0])
    return np.array(c, dtype=np.float64)


@dataclass
class BoxShapes:
    """Target box shapes of one split, with how each image's size was found."""

    wh: np.ndarray  # [N, 2] original pixels
    long_side: np.ndarray  # [N] max(h, w) of the box's image
    images: int = 0
    sizes_read: int = 0
    sizes_estimated: int = 0
    frames: dict[str, int] = field(default_factory=dict)  # "WxH" -> images

    def scaled(self, img_size: int) -> np.ndarray:
        """Shapes in network-input pixels after letterboxing to ``img_size``."""
        return self.wh * (img_size / self.long_side)[:, None]


def estimate_frame(
    extent_w: int, extent_h: int, frames: Iterable[tuple[int, int]] = VISDRONE_FRAMES
) -> tuple[int, int]:
    """The smallest standard frame holding a box extent; the extent itself when none does."""
    for w, h in frames:
        if extent_w <= w and extent_h <= h:
            return w, h
    return extent_w, extent_h


def visdrone_box_shapes(annotations: Path, images: Path | None = None, ignore: Iterable[int] = (0, 11)) -> BoxShapes:
    """Target boxes (categories not in ``ignore``) of a VisDrone annotation folder.

    Parsing goes through the data loader's strict parser (``detprune.data.visdrone_parse``), so
    a malformed line fails with ``file:line: field``.
    """
    files = sorted(Path(annotations).glob("*.txt"))
    if not files:
        raise DataFormatError(f"{annotations}: no VisDrone annotation files (*.txt)")
    found = find_images(images) if images is not None and Path(images).is_dir() else {}
    ignore = set(ignore)
    per_file: list[tuple[str, np.ndarray, tuple[int, int] | None]] = []
    extents: dict[str, list[int]] = {}
    for f in files:
        rows = read_annotation_file(f, name=f"{Path(annotations).name}/{f.name}")
        size = image_size(found[f.stem]) if f.stem in found else None  # (h, w)
        keep = rows[~np.isin(rows[:, 5], list(ignore))] if len(rows) else rows
        per_file.append((f.stem, keep[:, 2:4].astype(np.float64), size))
        if len(rows):  # every box, ignored regions included, bounds the frame
            seq = f.stem.split("_")[0]
            ext = extents.setdefault(seq, [0, 0])
            ext[0] = max(ext[0], int((rows[:, 0] + rows[:, 2]).max()))
            ext[1] = max(ext[1], int((rows[:, 1] + rows[:, 3]).max()))
    shapes = BoxShapes(np.zeros((0, 2)), np.zeros(0), images=len(files))
    wh_all, long_all = [], []
    for stem, wh, size in per_file:
        if size is not None:
            h, w = size
            shapes.sizes_read += 1
        else:
            w, h = estimate_frame(*extents.get(stem.split("_")[0], [1, 1]))
            shapes.sizes_estimated += 1
        key = f"{w}x{h}"
        shapes.frames[key] = shapes.frames.get(key, 0) + 1
        wh_all.append(wh)
        long_all.append(np.full(len(wh), float(max(h, w))))
    shapes.wh = np.concatenate(wh_all)
    shapes.long_side = np.concatenate(long_all)
    return shapes


def format_anchors(anchors: np.ndarray) -> list[list[int]]:
    """Anchors as integer pixel pairs, as in a Darknet cfg (at least 1 px)."""
    return [[max(1, int(round(w))), max(1, int(round(h)))] for w, h in anchors]


def card_anchors(card, img_size: int) -> list[list[float]] | None:
    """The card's ``anchors`` rescaled to ``img_size`` (they are stored in pixels of
    ``anchors_img_size``, else of the card's ``img_size``); None when the card has none."""
    anchors = card.extra.get("anchors")
    if not anchors:
        return None
    base = card.extra.get("anchors_img_size") or card.img_size or img_size
    k = float(img_size) / float(base)
    return [[round(float(w) * k, 2), round(float(h) * k, 2)] for w, h in anchors]


def write_card_anchors(card: Path, anchors: list[list[int]], comment: str, img_size: int) -> None:
    """Set the top-level ``anchors:`` key of a YAML card (and ``anchors_img_size:``, the input size
    they are in pixels of, so other input sizes can rescale them), leaving every other line as it is."""
    lines = [ln for ln in Path(card).read_text(encoding="utf-8").splitlines() if not ln.startswith("anchors_img_size:")]
    flow = "[" + ", ".join(f"[{w}, {h}]" for w, h in anchors) + "]"
    new = [f"# {comment}", f"anchors: {flow}", f"anchors_img_size: {int(img_size)}"]
    out, i, replaced = [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("anchors:"):
            if out and out[-1].startswith("# ") and "k-means" in out[-1]:
                out.pop()  # our own previous comment
            out += new
            replaced = True
            i += 1
            while i < len(lines) and lines[i].startswith((" ", "-")):  # a block-style value
                i += 1
            continue
        out.append(line)
        i += 1
    if not replaced:
        out += new
    Path(card).write_text("\n".join(out) + "\n", encoding="utf-8")


def dataset_anchors(card: Any, img_size: int, split: str = "train") -> list[list[float]]:
    """YOLO9000 k-means anchors (1 - IoU) of a split's boxes as the letterbox scales them to ``img_size``
    (the Darknet defaults are sized for 416-608 px COCO objects; drone objects are often 3-30 px)."""
    import numpy as np

    ds = build_dataset(card, split=split, img_size=img_size)
    wh = np.concatenate(
        [
            (
                np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)[:, 2:]
                - np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)[:, :2]
            )
            * (img_size / max(r.size))
            for r in ds.records
        ]
    )  # box shapes as the letterbox scales them
    anchors, _ = kmeans_anchors(wh, 9)
    return [[round(float(w), 2), round(float(h), 2)] for w, h in anchors]

"""Albumentations pipelines: letterbox for detectors, crop/flip for CIFAR-style classifiers.

Detection (YOLOv3 / SlimYOLOv3 style, ../shared/research/algorithms.md §7.1): the image is resized
so its longest side is ``img_size`` and padded to a square with gray (114). Training adds scale
jitter and translation (``Affine``), horizontal and vertical flips (aerial views have no "up"),
HSV and brightness/contrast changes; boxes follow through albumentations' ``BboxParams``.
Evaluation only letterboxes and records ``scale``/``pad`` so predictions map back to the original
pixels (:func:`unletterbox`). Images leave as float tensors in 0..1, ``[3, H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

PAD_VALUE = 114
KIND_TARGET, KIND_IGNORE, KIND_FRAME = 0, 1, 2


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> ``float [3, H, W]`` in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@dataclass
class Letterboxed:
    image: torch.Tensor  # [3, S, S] float 0..1
    boxes: np.ndarray  # [N, 4] xyxy, network-input pixels
    labels: np.ndarray  # [N]
    ignore: np.ndarray  # [M, 4] ignored regions, network-input pixels
    scale: float  # nominal: img_size / max(h, w)
    scale_xy: tuple[float, float]  # exact per-axis scale of the resize
    pad: tuple[float, float]  # (x, y) padding added on the left and top


class DetectionTransform:
    """Letterbox to ``img_size`` (square), with training augmentation when ``train``."""

    def __init__(
        self,
        img_size: int,
        train: bool = False,
        *,
        jitter: float = 0.3,
        translate: float = 0.1,
        hflip: float = 0.5,
        vflip: float = 0.5,
        hsv: float = 0.5,
        min_visibility: float = 0.3,
    ):
        self.img_size = int(img_size)
        self.train = train
        s = self.img_size
        ops: list[Any] = [
            A.LongestMaxSize(max_size=s, interpolation=cv2.INTER_LINEAR),
            A.PadIfNeeded(s, s, position="center", border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE),
        ]
        if train:
            ops += [
                A.Affine(
                    scale=(1 - jitter, 1 + jitter),
                    translate_percent=(-translate, translate),
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=PAD_VALUE,
                    p=1.0,
                ),
                A.HorizontalFlip(p=hflip),
                A.VerticalFlip(p=vflip),
                A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=40, val_shift_limit=30, p=hsv),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=hsv),
            ]
        bbox = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels", "kinds"],
            clip=True,
            min_visibility=min_visibility if train else 0.0,
            min_width=1.0 if train else 0.0,
            min_height=1.0 if train else 0.0,
        )
        self.pipeline = A.Compose(ops, bbox_params=bbox)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, ignore: np.ndarray | None = None
    ) -> Letterboxed:
        h, w = image.shape[:2]
        ignore = np.zeros((0, 4), np.float32) if ignore is None else ignore
        frame = np.array([[0, 0, w, h]], np.float32)  # follows the image: gives the exact scale and pad
        all_boxes = np.concatenate([np.asarray(boxes, np.float32).reshape(-1, 4), ignore.reshape(-1, 4), frame])
        kinds = np.concatenate([np.full(len(boxes), KIND_TARGET), np.full(len(ignore), KIND_IGNORE), [KIND_FRAME]])
        all_labels = np.concatenate([np.asarray(labels, np.int64).reshape(-1), np.full(len(ignore) + 1, -1)])
        out = self.pipeline(image=image, bboxes=all_boxes, labels=all_labels, kinds=kinds)
        ob = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        ok = np.asarray(out["kinds"], np.int64).reshape(-1)
        ol = np.asarray(out["labels"], np.int64).reshape(-1)
        nominal = self.img_size / max(h, w)
        fr = ob[ok == KIND_FRAME]
        if not self.train and len(fr) == 1:
            x1, y1, x2, y2 = (float(v) for v in fr[0])
            scale_xy, pad = ((x2 - x1) / w, (y2 - y1) / h), (x1, y1)
        else:  # augmented: the nominal letterbox (metas are only used to map eval predictions back)
            nw, nh = round(w * nominal), round(h * nominal)
            scale_xy, pad = (nw / w, nh / h), (float((self.img_size - nw) // 2), float((self.img_size - nh) // 2))
        return Letterboxed(
            image=to_tensor(out["image"]),
            boxes=ob[ok == KIND_TARGET],
            labels=ol[ok == KIND_TARGET],
            ignore=ob[ok == KIND_IGNORE],
            scale=nominal,
            scale_xy=scale_xy,
            pad=pad,
        )


def unletterbox(boxes: torch.Tensor, meta: dict[str, Any], clip: bool = True) -> torch.Tensor:
    """Network-input xyxy boxes -> original image pixels, using ``meta`` from a detection sample."""
    sx, sy = meta.get("scale_xy") or (meta["scale"], meta["scale"])
    px, py = meta["pad"]
    out = boxes.clone().float()
    out[..., 0::2] = (out[..., 0::2] - px) / sx
    out[..., 1::2] = (out[..., 1::2] - py) / sy
    if clip:
        h, w = meta["orig_size"]
        out[..., 0::2] = out[..., 0::2].clamp(0, w)
        out[..., 1::2] = out[..., 1::2].clamp(0, h)
    return out


class ClassificationTransform:
    """CIFAR recipe (network-slimming ``main.py``): pad 4, random crop, flip; eval resizes only."""

    def __init__(self, img_size: int, train: bool = False, pad: int | None = None):
        s = int(img_size)
        pad = s // 8 if pad is None else pad
        ops: list[Any] = [A.Resize(s, s, interpolation=cv2.INTER_LINEAR)]
        if train:
            ops += [
                A.PadIfNeeded(s + 2 * pad, s + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
                A.RandomCrop(s, s),
                A.HorizontalFlip(p=0.5),
            ]
        self.pipeline = A.Compose(ops)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return to_tensor(self.pipeline(image=image)["image"])

"""Boxes survive the albumentations pipelines; letterbox metas map predictions back exactly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from detprune.data.collate import collate_detection
from detprune.data.transforms import (
    ClassificationTransform,
    DetectionTransform,
    unletterbox,
)


def _scene(h, w, boxes):
    img = np.full((h, w, 3), 40, np.uint8)
    for x1, y1, x2, y2 in boxes:
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (255, 255, 255), -1)
    return img


def _white_box(image: torch.Tensor, box) -> tuple[float, float, float, float]:
    """Bounding box of bright pixels inside a slightly grown region around ``box``."""
    m = image.mean(0).numpy() > 0.75
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    sub = m[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3]
    ys, xs = np.nonzero(sub)
    ox, oy = max(0, x1 - 3), max(0, y1 - 3)
    return ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1


@pytest.mark.parametrize("h, w", [(300, 500), (500, 300), (608, 608), (37, 101)])
def test_eval_letterbox_round_trip(h, w):
    boxes = np.array([[0, 0, w, h], [w * 0.1, h * 0.2, w * 0.5, h * 0.9]], np.float32)
    lb = DetectionTransform(320)(_scene(h, w, []), boxes, np.array([1, 2]))
    assert lb.image.shape == (3, 320, 320) and lb.labels.tolist() == [1, 2]
    meta = {"scale": lb.scale, "scale_xy": lb.scale_xy, "pad": lb.pad, "orig_size": (h, w)}
    back = unletterbox(torch.as_tensor(lb.boxes), meta)
    assert torch.allclose(back, torch.as_tensor(boxes), atol=1e-3)
    assert lb.scale == pytest.approx(320 / max(h, w))
    # the frame of the image lands on the non-gray area, padding is centred
    px, py = lb.pad
    assert (
        min(px, py) == 0
        and abs(px + lb.scale_xy[0] * w + px - 320) <= 1
        and abs(2 * py + lb.scale_xy[1] * h - 320) <= 1
    )


def test_eval_boxes_sit_on_the_drawn_objects():
    boxes = np.array([[100, 50, 160, 90], [400, 300, 430, 360]], np.float32)
    lb = DetectionTransform(256)(_scene(480, 640, boxes), boxes, np.array([0, 1]))
    for box in lb.boxes:
        assert np.allclose(_white_box(lb.image, box), box, atol=1.0)


def test_train_augmentation_keeps_boxes_on_their_objects():
    boxes = np.array([[100, 60, 170, 110], [300, 200, 340, 260], [40, 300, 90, 330]], np.float32)
    img = _scene(400, 512, boxes)
    t = DetectionTransform(320, train=True, hsv=0.0)  # colour jitter would move the brightness threshold
    first_box_x = []
    for seed in range(25):
        t.pipeline.set_random_seed(seed)
        lb = t(img, boxes, np.array([0, 1, 2]))
        assert lb.image.shape == (3, 320, 320)
        assert len(lb.boxes) == len(lb.labels) <= 3
        for box, lab in zip(lb.boxes, lb.labels):
            x1, y1, x2, y2 = box
            if min(x1, y1) <= 1 or max(x2, y2) >= 319:
                continue  # cut by the border: the visible part only
            assert np.allclose(_white_box(lb.image, box), box, atol=1.5), (seed, lab, box)
        first_box_x += [float(b[0] + b[2]) / 2 for b, lab in zip(lb.boxes, lb.labels) if lab == 0]
    assert lb.scale == pytest.approx(320 / 512)
    assert min(first_box_x) < 120 and max(first_box_x) > 200  # flips and jitter really moved it


def test_ignored_regions_follow_the_image():
    ign = np.array([[10, 10, 50, 40]], np.float32)
    lb = DetectionTransform(128)(_scene(200, 200, ign), np.zeros((0, 4), np.float32), np.zeros(0, np.int64), ign)
    assert lb.boxes.shape == (0, 4) and np.allclose(lb.ignore, ign * 0.64, atol=1e-3)


def test_classification_transform_shapes_and_range():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ev = ClassificationTransform(32)(img)
    assert ev.shape == (3, 32, 32) and torch.allclose(ev, torch.from_numpy(img).permute(2, 0, 1).float() / 255)
    tr = ClassificationTransform(32, train=True)
    tr.pipeline.set_random_seed(0)
    assert tr(img).shape == (3, 32, 32)


def test_collate_detection_keeps_variable_box_counts():
    samples = [
        (
            torch.zeros(3, 8, 8),
            {"boxes": torch.zeros(n, 4), "labels": torch.zeros(n, dtype=torch.long)},
            {"image_id": i},
        )
        for i, n in enumerate([0, 3, 1])
    ]
    images, targets, metas = collate_detection(samples)
    assert images.shape == (3, 3, 8, 8)
    assert [len(t["boxes"]) for t in targets] == [0, 3, 1] and [m["image_id"] for m in metas] == [0, 1, 2]
    with pytest.raises(ValueError, match="differ in size"):
        collate_detection(samples + [(torch.zeros(3, 9, 9), samples[0][1], {"image_id": 9})])

"""Slow: a small YOLOv3 and a small CenterNet each overfit a handful of synthetic VisDrone-format
images on the CPU. The loss must fall by more than 90 % and mAP@0.5 on those images (pycocotools,
through detprune.eval.evaluate) must exceed 0.5: the loss, the targets it builds, the decoder and the
letterbox inverse have to agree for that to happen.
"""
from __future__ import annotations

import pytest
import torch

import detprune
from detprune.data.anchors import format_anchors, kmeans_anchors, visdrone_box_shapes

IMAGES, IMG_SIZE = 4, 256


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from detprune.data import build_dataset, make_loader
    from detprune.data.synthetic import generate

    root = generate(tmp_path_factory.mktemp("synth") / "train", IMAGES, seed=3, progress=False)
    ds = build_dataset(root, img_size=IMG_SIZE, train=False)
    loader = make_loader(ds, batch_size=IMAGES)
    images, targets, metas = next(iter(loader))
    return root, ds, loader, images, targets


def _overfit(adapter, model, images, targets, steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    first = last = None
    for _ in range(steps):
        loss, _ = adapter.loss(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        last = float(loss.detach())
        first = last if first is None else first
    return first, last


@pytest.mark.slow
def test_small_yolov3_overfits_synthetic_visdrone_images(tiny_set):
    from detprune.eval.evaluate import evaluate_model

    root, ds, loader, images, targets = tiny_set
    wh = visdrone_box_shapes(root / "annotations", root / "images").scaled(IMG_SIZE)
    anchors = format_anchors(kmeans_anchors(wh, n=9)[0])  # the shapes of this data, as `detprune anchors` does
    a = detprune.plugins().adapter("yolov3", img_size=IMG_SIZE, width=0.25, depth=0.34, anchors=anchors)
    torch.manual_seed(0)
    model = a.build()
    first, last = _overfit(a, model, images, targets, steps=400, lr=2e-3)
    result = evaluate_model(model, a, loader, conf=0.1, progress=False)
    print(f"yolov3 loss {first:.3f} -> {last:.3f}, mAP@0.5 {result['map50']:.3f}")
    assert last < 0.1 * first
    assert result["map50"] > 0.5


@pytest.mark.slow
def test_small_centernet_overfits_synthetic_visdrone_images(tiny_set):
    from detprune.eval.evaluate import evaluate_model

    root, ds, loader, images, targets = tiny_set
    a = detprune.plugins().adapter("centernet-resnet18", img_size=IMG_SIZE, width=0.25)
    torch.manual_seed(0)
    model = a.build()
    first, last = _overfit(a, model, images, targets, steps=300, lr=2e-3)
    result = evaluate_model(model, a, loader, conf=0.1, progress=False)
    print(f"centernet loss {first:.3f} -> {last:.3f}, mAP@0.5 {result['map50']:.3f}")
    assert last < 0.1 * first
    assert result["map50"] > 0.5

"""A small YOLOv3 and a small CenterNet each overfit synthetic VisDrone-format images on the CPU;
mAP@0.5 on those images (pycocotools, through detprune.eval.evaluate) must exceed 0.5: the loss, the
targets it builds, the decoder and the letterbox inverse have to agree for that to happen. The tiny
versions (two images at 128 px, ~10 s) run in the default suite; the slow ones (four at 256 px)
also demand a 90 % loss drop.
"""

from __future__ import annotations

import pytest
import torch

import detprune
from detprune.data.anchors import format_anchors, kmeans_anchors, visdrone_box_shapes

IMAGES, IMG_SIZE = 4, 256


def _set(folder, images: int, size: int):
    from detprune.data import build_dataset, make_loader
    from detprune.data.synthetic import generate

    root = generate(folder / "train", images, seed=3, progress=False)
    ds = build_dataset(root, img_size=size, train=False)
    loader = make_loader(ds, batch_size=images)
    batch, targets, _ = next(iter(loader))
    return root, ds, loader, batch, targets


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return _set(tmp_path_factory.mktemp("synth"), IMAGES, IMG_SIZE)


@pytest.fixture(scope="module")
def tinier_set(tmp_path_factory):
    return _set(tmp_path_factory.mktemp("synth2"), 2, 128)


def _anchors(root, size: int):
    wh = visdrone_box_shapes(root / "annotations", root / "images").scaled(size)
    return format_anchors(kmeans_anchors(wh, n=9)[0])  # the shapes of this data, as `detprune anchors` does


@pytest.mark.parametrize(
    "name, args, steps, drop",
    [
        ("yolov3", {"width": 0.125, "depth": 0.34}, 200, 0.5),
        ("centernet-resnet18", {"width": 0.125}, 150, 0.1),
    ],
)
def test_loss_targets_and_decoder_agree_at_a_tiny_size(tinier_set, name, args, steps, drop):
    from detprune.eval.evaluate import evaluate_model

    root, ds, loader, images, targets = tinier_set
    if name == "yolov3":
        args = {**args, "anchors": _anchors(root, 128)}
    a = detprune.plugins().adapter(name, img_size=128, **args)
    torch.manual_seed(0)
    model = a.build()
    first, last = _overfit(a, model, images, targets, steps=steps, lr=3e-3)
    result = evaluate_model(model, a, loader, conf=0.1, progress=False)
    assert last < drop * first
    assert result["map50"] > 0.5


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
    a = detprune.plugins().adapter(
        "yolov3", img_size=IMG_SIZE, width=0.25, depth=0.34, anchors=_anchors(root, IMG_SIZE)
    )
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

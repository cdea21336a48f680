"""CenterNet adapter: pinned size, targets equal to the reference code's, loss/backward, decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune_plugins.models.centernet.decode import decode
from detprune_plugins.models.centernet.loss import (
    build_targets,
    centernet_loss,
    focal_loss,
    gaussian_radius,
)


def small(**kw):
    return detprune.plugins().adapter("centernet-resnet18", **{"width": 0.125, "img_size": 128, **kw})


# ---- the reference (xingyizhou/CenterNet utils/image.py), transcribed to compare against ------------


def ref_gaussian_radius(det_size, min_overlap=0.7):
    height, width = det_size
    a1, b1 = 1, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + np.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def ref_draw_umich_gaussian(heatmap, center, radius):
    diameter = 2 * radius + 1
    m = (diameter - 1.0) / 2.0
    y, x = np.ogrid[-m : m + 1, -m : m + 1]
    gaussian = np.exp(-(x * x + y * y) / (2 * (diameter / 6) ** 2))
    gaussian[gaussian < np.finfo(gaussian.dtype).eps * gaussian.max()] = 0
    x, y = int(center[0]), int(center[1])
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    masked_heatmap = heatmap[y - top : y + bottom, x - left : x + right]
    masked_gaussian = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(masked_heatmap, masked_gaussian, out=masked_heatmap)


def ref_targets(boxes, labels, nc, out_h, out_w):
    """ctdet.py __getitem__ after the affine: boxes already in input pixels, down ratio 4."""
    hm = np.zeros((nc, out_h, out_w), np.float32)
    inds, whs, regs = [], [], []
    for bbox, cls in zip(boxes / 4.0, labels):
        bbox = bbox.copy()
        bbox[[0, 2]] = np.clip(bbox[[0, 2]], 0, out_w - 1)
        bbox[[1, 3]] = np.clip(bbox[[1, 3]], 0, out_h - 1)
        h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
        if h > 0 and w > 0:
            radius = max(0, int(ref_gaussian_radius((math.ceil(h), math.ceil(w)))))
            ct = np.array([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2], dtype=np.float32)
            ct_int = ct.astype(np.int32)
            ref_draw_umich_gaussian(hm[cls], ct_int, radius)
            whs.append((w, h))
            inds.append(ct_int[1] * out_w + ct_int[0])
            regs.append(ct - ct_int)
    return hm, np.array(inds), np.array(whs, np.float32), np.array(regs, np.float32)


# ---- tests ------------------------------------------------------------------------------------------


def test_parameter_count_is_pinned_for_res18_with_head_conv_64():
    with torch.device("meta"):
        model = detprune.plugins().adapter("centernet-resnet18", num_classes=10).build()
    assert sum(p.numel() for p in model.parameters()) == 15_815_822  # 15.82M (the seed's 16.37M: see docstring)


def test_architecture_is_msra_res18():
    a = detprune.plugins().adapter("centernet-resnet18", img_size=128)
    model = a.build()
    deconvs = [m for m in model.deconv if isinstance(m, nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels, d.kernel_size, d.stride, d.padding) for d in deconvs] == [
        (512, 256, (4, 4), (2, 2), (1, 1)),
        (256, 256, (4, 4), (2, 2), (1, 1)),
        (256, 256, (4, 4), (2, 2), (1, 1)),
    ]
    assert a.protected(model) == ["hm.2", "wh.2", "reg.2"]
    assert [model.get_submodule(n).out_channels for n in a.protected(model)] == [10, 2, 2]
    assert torch.all(model.hm[2].bias == -2.19)
    import torchvision

    ref = torchvision.models.resnet18().state_dict()
    ours = model.backbone.state_dict()
    assert set(ours) == {k for k in ref if not k.startswith("fc.")}
    assert all(ours[k].shape == ref[k].shape for k in ours)
    outs = model(torch.rand(1, 3, 128, 128))
    assert [tuple(o.shape) for o in outs] == [(1, 10, 32, 32), (1, 2, 32, 32), (1, 2, 32, 32)]


def test_radius_matches_the_reference_code_and_the_fix_solves_the_iou_equations():
    rng = np.random.default_rng(0)
    hw = rng.uniform(1, 120, size=(200, 2)).round()
    ours = gaussian_radius(torch.tensor(hw[:, 0]), torch.tensor(hw[:, 1])).numpy()
    assert np.allclose(ours, [ref_gaussian_radius((h, w)) for h, w in hw])
    h, w = torch.tensor(hw[:, 0]), torch.tensor(hw[:, 1])
    r = gaussian_radius(h, w, fixed=True)
    # CornerNet 3.1: a corner pair shifted by r (three cases) keeps IoU >= 0.7, with equality in the tightest case
    shifted = (h - r) * (w - r) / (2 * h * w - (h - r) * (w - r))
    inner = (h - 2 * r) * (w - 2 * r) / (h * w)
    outer = h * w / ((h + 2 * r) * (w + 2 * r))
    ious = torch.stack([shifted, inner, outer])
    assert torch.all(ious >= 0.7 - 1e-9) and torch.allclose(ious.min(0).values, torch.full_like(h, 0.7))


def test_targets_equal_the_reference_targets():
    rng = np.random.default_rng(1)
    n = 40
    xy = rng.uniform(-10, 120, size=(n, 2))
    wh = rng.uniform(2, 60, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    hm, inds, whs, regs = ref_targets(boxes, labels, 3, 32, 32)
    ours = build_targets(torch.tensor(boxes), torch.tensor(labels), 3, 32, 32)
    assert torch.allclose(ours["hm"], torch.tensor(hm), atol=1e-6)
    assert ours["ind"].tolist() == inds.tolist()
    assert torch.allclose(ours["wh"], torch.tensor(whs), atol=1e-5)
    assert torch.allclose(ours["reg"], torch.tensor(regs), atol=1e-5)


def test_no_object_cap_every_visdrone_scale_object_gets_a_target():
    n = 1200  # VisDrone images hold up to 461 valid boxes; CenterNet's max_objs=128 would drop most
    xy = torch.rand(n, 2) * 600
    boxes = torch.cat([xy, xy + 4 + torch.rand(n, 2) * 8], 1)
    t = build_targets(boxes, torch.zeros(n, dtype=torch.long), 1, 152, 152)
    assert len(t["ind"]) == n


def test_focal_loss_by_hand():
    gt = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    pred = torch.tensor([[[[0.8, 0.3], [0.1, 0.2]]]])
    pos = math.log(0.8) * 0.2**2
    neg = math.log(0.7) * 0.3**2 * 0.5**4 + math.log(0.9) * 0.1**2 + math.log(0.8) * 0.2**2
    assert torch.isclose(focal_loss(pred, gt), torch.tensor(-(pos + neg)))
    assert torch.isclose(
        focal_loss(pred, torch.zeros_like(gt)),
        torch.tensor(-(math.log(0.2) * 0.64 + math.log(0.7) * 0.09 + math.log(0.9) * 0.01 + math.log(0.8) * 0.04)),
    )


def test_forward_loss_backward_on_cpu():
    a = small()
    model = a.build()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 70.0, 120.0, 100.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    outs = model(torch.rand(2, 3, 128, 128))
    loss, parts = a.loss(outs, targets)
    loss.backward()
    assert set(parts) == {"hm", "wh", "off"} and torch.isfinite(loss)
    assert torch.isclose(loss, torch.tensor(parts["hm"] + 0.1 * parts["wh"] + parts["off"]), rtol=1e-5)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_perfect_outputs_have_the_minimal_loss_and_decode_to_the_boxes():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 70.0, 121.0, 101.0]])
    labels = torch.tensor([1, 3])
    t = build_targets(boxes, labels, 4, 32, 32)
    hm = torch.logit(t["hm"].clamp(1e-6, 1 - 1e-6))[None]
    wh, reg = torch.zeros(1, 2, 32 * 32), torch.zeros(1, 2, 32 * 32)
    wh[0, :, t["ind"]] = t["wh"].T
    reg[0, :, t["ind"]] = t["reg"].T
    outs = (hm, wh.view(1, 2, 32, 32), reg.view(1, 2, 32, 32))
    _, parts = centernet_loss(outs, [{"boxes": boxes, "labels": labels}], 4)
    assert parts["wh"] < 1e-5 and parts["off"] < 1e-5
    (det,) = decode(outs, conf=0.9)
    order = det["labels"].argsort()
    assert det["labels"][order].tolist() == [1, 3]
    assert torch.allclose(det["boxes"][order], boxes, atol=1e-4)


def test_decode_hand_built_peak_and_letterbox_inverse():
    hm = torch.full((1, 10, 32, 32), -20.0)
    hm[0, 3, 10, 7] = 5.0
    hm[0, 3, 10, 8] = 4.0  # a neighbour of the peak: suppressed by the 3x3 max-pool
    wh, reg = torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32)
    wh[0, :, 10, 7] = torch.tensor([8.0, 4.0])
    reg[0, :, 10, 7] = torch.tensor([0.25, 0.75])
    (det,) = decode((hm, wh, reg), conf=0.1)
    assert det["labels"].tolist() == [3]
    assert torch.allclose(det["boxes"], torch.tensor([[13.0, 35.0, 45.0, 51.0]]))  # (7.25 +- 4, 10.75 +- 2) x 4
    assert torch.isclose(det["scores"][0], torch.sigmoid(torch.tensor(5.0)))
    a = small()
    meta = {"image_id": "img", "orig_size": (300, 400), "scale": 0.25, "pad": (3.0, 0.0)}
    (det,) = a.decode((hm, wh, reg), [meta])
    assert det["image_id"] == "img"
    assert torch.allclose(det["boxes"], torch.tensor([[40.0, 140.0, 168.0, 204.0]]))


def test_decode_returns_up_to_max_det_peaks():
    hm = torch.zeros(1, 2, 64, 64)
    hm[:, :, ::2, ::2] = 1.0  # 2 x 32 x 32 = 2048 isolated peaks
    outs = (hm, torch.ones(1, 2, 64, 64), torch.zeros(1, 2, 64, 64))
    assert len(decode(outs, conf=0.1, k=500)[0]["boxes"]) == 500
    assert len(small(max_det=1000).decode(outs)[0]["boxes"]) == 1000


def test_bad_arguments_are_clear_errors():
    with pytest.raises(
        DetpruneError, match=r"adapter 'centernet-resnet18': radius must be 'cornernet' or 'fixed', got 'x'"
    ):
        small(radius="x")
    with pytest.raises(
        DetpruneError, match=r"adapter 'centernet-resnet18': img_size must be a multiple of 32, got 500"
    ):
        small(img_size=500)

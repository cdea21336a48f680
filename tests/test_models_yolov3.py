"""YOLOv3 adapter: Darknet cfg twin, pinned size, loss/backward, target matching and decoding."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune_plugins.models.yolov3.decode import decode
from detprune_plugins.models.yolov3.loss import YOLOv3Loss
from detprune_plugins.models.yolov3.model import DARKNET_ANCHORS, darknet_layers


def small(**kw):
    args = {"width": 0.125, "depth": 0.34, "img_size": 128, **kw}
    return detprune.plugins().adapter("yolov3", **args)


def test_layer_list_is_the_darknet_cfg():
    defs = darknet_layers(10)
    assert len(defs) == 107
    assert Counter(d["type"] for d in defs) == {"conv": 75, "shortcut": 23, "route": 4, "upsample": 2, "yolo": 3}
    routes = {i: d["layers"] for i, d in enumerate(defs) if d["type"] == "route"}
    assert routes == {83: [79], 86: [85, 61], 95: [91], 98: [97, 36]}  # cfg: -4 | -1,61 | -4 | -1,36
    assert [i for i, d in enumerate(defs) if d["type"] == "yolo"] == [82, 94, 106]
    assert [i for i, d in enumerate(defs) if d["type"] == "upsample"] == [85, 97]
    assert all(d["from"] == i - 3 for i, d in enumerate(defs) if d["type"] == "shortcut")
    linear = [i for i, d in enumerate(defs) if d["type"] == "conv" and not d["bn"]]
    assert linear == [81, 93, 105] and all(defs[i]["filters"] == 45 and defs[i]["size"] == 1 for i in linear)


def test_parameters_and_flops_are_pinned_at_608():
    """algorithms.md 7.1: 61.572M parameters and 139.61 GFLOPs (2 x MAC) for 10 classes at 608."""
    from torch.utils.flop_counter import FlopCounterMode

    a = detprune.plugins().adapter("yolov3", num_classes=10, img_size=608)
    with torch.device("meta"):
        model = a.build()
        x = torch.empty(1, 3, 608, 608)
        with FlopCounterMode(display=False) as counter:
            outs = model(x)
    assert sum(p.numel() for p in model.parameters()) == 61_572_199
    assert round(counter.get_total_flops() / 1e9, 2) == 139.61
    assert [tuple(o.shape) for o in outs] == [(1, 45, 19, 19), (1, 45, 38, 38), (1, 45, 76, 76)]


def test_blocks_are_conv_bn_leaky_and_outputs_are_protected():
    a = small()
    model = a.build()
    heads = [i - 1 for i, d in enumerate(darknet_layers(10, 0.125, 0.34)) if d["type"] == "yolo"]
    assert a.protected(model) == [f"layers.{i}.conv" for i in heads]
    full = detprune.plugins().adapter("yolov3")
    with torch.device("meta"):
        assert full.protected(full.build()) == ["layers.81.conv", "layers.93.conv", "layers.105.conv"]
    for name in a.protected(model):
        conv = model.get_submodule(name)
        assert conv.bias is not None and conv.out_channels == 3 * (5 + 10) and conv.kernel_size == (1, 1)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.1 and not m.inplace for m in acts)
    assert (
        sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        == sum(isinstance(m, nn.Conv2d) for m in model.modules()) - 3
    )


def _batch():
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 70.0, 120.0, 100.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return torch.rand(2, 3, 128, 128), targets


def test_forward_loss_backward_on_cpu():
    a = small()
    model = a.build()
    x, targets = _batch()
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 45, 4, 4), (2, 45, 8, 8), (2, 45, 16, 16)]
    loss, parts = a.loss(outs, targets)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"box", "obj", "cls"} and parts["box"] > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_loss_without_any_object_is_objectness_only():
    a = small()
    outs = a.build()(torch.rand(1, 3, 128, 128))
    loss, parts = a.loss(outs, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert parts["box"] == 0 and parts["cls"] == 0 and parts["obj"] > 0
    assert torch.isclose(loss, torch.tensor(64.3 * parts["obj"]))


def test_labels_out_of_range_are_rejected():
    a = small(num_classes=3)
    outs = a.build()(torch.rand(1, 3, 128, 128))
    bad = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([3])}]
    with pytest.raises(
        DetpruneError, match=r"target 0: labels must be 0-based class ids below num_classes=3, got \[3\]"
    ):
        a.loss(outs, bad)


def test_anchor_matching_by_wh_ratio_and_by_iou():
    anchors = [list(map(float, p)) for p in DARKNET_ANCHORS]
    outs = [torch.zeros(1, 45, 4, 4), torch.zeros(1, 45, 8, 8), torch.zeros(1, 45, 16, 16)]
    box = [{"boxes": torch.tensor([[40.0, 40.0, 70.0, 100.0]]), "labels": torch.tensor([0])}]  # w 30, h 60
    by_ratio = YOLOv3Loss(anchors, 10, match="ratio").build_targets(outs, box)
    # max side ratio < 4: 10x13 (60/13 = 4.6) and 156x198 (156/30 = 5.2) and 373x326 fail; 116x90 (3.9) passes
    matched = sorted(
        int(m[a]) for (idx, _, _, _), m in zip(by_ratio, ((6, 7, 8), (3, 4, 5), (0, 1, 2))) for a in idx[1]
    )
    assert matched == [1, 2, 3, 4, 5, 6]
    by_iou = YOLOv3Loss(anchors, 10, match="iou").build_targets(outs, box)
    matched = sorted(int(m[a]) for (idx, _, _, _), m in zip(by_iou, ((6, 7, 8), (3, 4, 5), (0, 1, 2))) for a in idx[1])
    assert matched == [1, 2, 3, 4, 5]  # IoU with 30x60: .27 .37 .98 .42 .26 > 0.20; 116x90 .17 and 10x13 .07 do not
    # the cell holding the centre (55, 70): stride 16 -> (3, 4); target offsets (0.4375, 0.375)
    (b, a, gj, gi), tbox, anch, tcls = by_ratio[1]
    assert a.tolist() == [0, 1, 2] and gi.tolist() == [3, 3, 3] and gj.tolist() == [4, 4, 4]
    assert torch.allclose(tbox[0], torch.tensor([55 / 16 - 3, 70 / 16 - 4, 30 / 16, 60 / 16]))


def _encode(box, label, anchor_index, nc=10, img=128):
    """Raw outputs whose only confident prediction is ``box`` (xyxy) on anchor ``anchor_index``."""
    sizes = {s: img // s for s in (32, 16, 8)}
    outs = []
    for stride, mask in zip((32, 16, 8), ((6, 7, 8), (3, 4, 5), (0, 1, 2))):
        g = sizes[stride]
        p = torch.zeros(1, 3, 5 + nc, g, g)
        p[:, :, 4] = -30.0
        if anchor_index in mask:
            a = mask.index(anchor_index)
            cx, cy = (box[0] + box[2]) / 2 / stride, (box[1] + box[3]) / 2 / stride
            w, h = box[2] - box[0], box[3] - box[1]
            gi, gj = int(cx), int(cy)
            logit = lambda v: math.log(v / (1 - v))  # noqa: E731
            aw, ah = DARKNET_ANCHORS[anchor_index]
            p[0, a, :, gj, gi] = torch.tensor(
                [logit(cx - gi), logit(cy - gj), math.log(w / aw), math.log(h / ah), 30.0] + [-30.0] * nc
            )
            p[0, a, 5 + label, gj, gi] = 30.0
        outs.append(p.view(1, 3 * (5 + nc), g, g))
    return outs


def test_decode_recovers_a_hand_encoded_box_in_network_pixels():
    anchors = [list(map(float, p)) for p in DARKNET_ANCHORS]
    outs = _encode([26.0, 33.0, 150.0, 78.0], label=2, anchor_index=4)  # (62, 45) anchor, stride 16
    (det,) = decode(outs, anchors, 10, conf=0.1)
    assert det["labels"].tolist() == [2]
    assert torch.allclose(det["boxes"], torch.tensor([[26.0, 33.0, 150.0, 78.0]]), atol=1e-3)
    assert det["scores"][0] > 0.99


def test_decode_maps_boxes_back_through_the_letterbox():
    """A 256x200 image letterboxed to 128: scale 0.5, padded 14 px top and bottom (pad = (0, 14))."""
    a = small()
    outs = _encode([26.0, 34.0, 90.0, 78.0], label=5, anchor_index=4)
    meta = {"image_id": 7, "orig_size": (200, 256), "scale": 0.5, "pad": (0.0, 14.0)}
    (det,) = a.decode(outs, [meta], conf=0.5)
    assert det["image_id"] == 7 and det["labels"].tolist() == [5]
    assert torch.allclose(det["boxes"], torch.tensor([[52.0, 40.0, 180.0, 128.0]]), atol=1e-3)


def test_decode_keeps_one_box_per_object_after_class_wise_nms_and_caps_max_det():
    anchors = [list(map(float, p)) for p in DARKNET_ANCHORS]
    outs = [o.clone() for o in _encode([26.0, 33.0, 150.0, 78.0], label=2, anchor_index=4)]
    twin = _encode([27.0, 33.0, 151.0, 78.0], label=2, anchor_index=5)  # same object, another anchor
    merged = [
        torch.where(
            t.view(1, 3, 15, *t.shape[2:])[:, :, 4:5] > 0,
            t.view(1, 3, 15, *t.shape[2:]),
            o.view(1, 3, 15, *o.shape[2:]),
        ).view_as(o)
        for o, t in zip(outs, twin)
    ]
    (det,) = decode(merged, anchors, 10, conf=0.1, nms_iou=0.5)
    assert len(det["boxes"]) == 1
    noisy = [torch.zeros_like(o) for o in outs]  # every cell and class scores 0.25
    (det,) = decode(noisy, anchors, 10, conf=0.1, nms_iou=1.0, max_det=300)
    assert len(det["boxes"]) == 300


def test_loss_targets_and_decoder_agree():
    """Encoding the loss's matched targets as predictions decodes back to the target box."""
    anchors = [list(map(float, p)) for p in DARKNET_ANCHORS]
    box = torch.tensor([[30.0, 40.0, 80.0, 76.0]])
    loss_fn = YOLOv3Loss(anchors, 10)
    outs = [torch.full((1, 3, 15, g, g), -30.0) for g in (4, 8, 16)]
    built = loss_fn.build_targets(
        [o.view(1, 45, *o.shape[3:]) for o in outs], [{"boxes": box, "labels": torch.tensor([4])}]
    )
    for p, ((b, a, gj, gi), tbox, anch, tcls) in zip(outs, built):
        for k in range(len(b)):
            xy = torch.logit(tbox[k, :2])
            wh = torch.log(tbox[k, 2:] / anch[k])
            p[b[k], a[k], :4, gj[k], gi[k]] = torch.cat([xy, wh])
            p[b[k], a[k], 4, gj[k], gi[k]] = 30.0
            p[b[k], a[k], 5 + tcls[k], gj[k], gi[k]] = 30.0
    (det,) = decode([o.view(1, 45, *o.shape[3:]) for o in outs], anchors, 10, conf=0.5)
    assert det["labels"].tolist() == [4]
    assert torch.allclose(det["boxes"], box, atol=1e-3)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(DetpruneError, match=r"adapter 'yolov3': anchors must be 9 positive \[w, h\] pairs"):
        detprune.plugins().adapter("yolov3", anchors=[[10, 13]])
    with pytest.raises(DetpruneError, match=r"adapter 'yolov3': img_size must be a multiple of 32, got 100"):
        detprune.plugins().adapter("yolov3", img_size=100)
    with pytest.raises(DetpruneError, match=r"adapter 'yolov3': match must be 'ratio' or 'iou', got 'best'"):
        detprune.plugins().adapter("yolov3", match="best")
    with pytest.raises(DetpruneError, match=r"adapter 'yolov3': unknown loss setting\(s\) \['gain'\]"):
        detprune.plugins().adapter("yolov3", hyp={"gain": 1.0})


def test_width_and_depth_multipliers_keep_the_shape():
    defs = darknet_layers(10, width=0.25, depth=0.34)
    assert Counter(d["type"] for d in defs)["route"] == 4
    assert Counter(d["type"] for d in defs)["shortcut"] == 1 + 1 + 3 + 3 + 1
    assert max(d["filters"] for d in defs if d["type"] == "conv") == 256
    model = small().build()
    gm = torch.fx.symbolic_trace(model.eval())
    x = torch.rand(1, 3, 128, 128)
    assert all(torch.equal(u, v) for u, v in zip(gm(x), model(x)))

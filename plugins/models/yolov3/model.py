"""YOLOv3 (Redmon & Farhadi 2018, arXiv 1804.02767): a layer-for-layer twin of Darknet's
``yolov3.cfg`` as SlimYOLOv3 (PengyiZhang/SlimYOLOv3 ``cfg/00-unpruned/yolov3.cfg``) pruned on
VisDrone: Darknet-53 (section 2.4) and the three-scale head (section 2.3).

The model is generated from a list of Darknet layer definitions, so module ``layers.<i>`` is
Darknet layer ``i``: 107 layers = 75 convs (72 conv-BN-LeakyReLU(0.1) + three linear 1x1 output
convs with bias at 81/93/105), 23 shortcuts, 4 routes (83: -4; 86: -1,61; 95: -4; 98: -1,36),
2 upsamples and 3 ``yolo`` outputs (82/94/106). For 10 classes at 608: 61,572,199 parameters and
139.61 GFLOPs (2 x MAC), research/algorithms.md section 7.1. ``width``/``depth`` multipliers give
small models of the same shape (``depth`` scales the residual block counts 1/2/8/8/4, so layer
numbers match Darknet only at ``depth=1``).

The forward returns the three raw output maps ``[B, 3*(5+nc), H, W]`` at strides 32, 16, 8;
``yolov3_loss`` and ``yolov3_decode`` interpret them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from detprune_plugins.models.base import scaled

#: ``yolov3.cfg`` anchors in network-input pixels (COCO k-means at 416/608), small to large.
DARKNET_ANCHORS: tuple[tuple[int, int], ...] = (
    (10, 13),
    (16, 30),
    (33, 23),
    (30, 61),
    (62, 45),
    (59, 119),
    (116, 90),
    (156, 198),
    (373, 326),
)
#: anchor indices per output, in output order (strides 32, 16, 8): the cfg's ``mask`` lines.
MASKS: tuple[tuple[int, int, int], ...] = ((6, 7, 8), (3, 4, 5), (0, 1, 2))
STRIDES: tuple[int, int, int] = (32, 16, 8)


def darknet_layers(num_classes: int, width: float = 1.0, depth: float = 1.0) -> list[dict[str, Any]]:
    """The Darknet layer list of yolov3.cfg (``type`` conv/shortcut/route/upsample/yolo).

    ``from`` (shortcut) and ``layers`` (route) hold absolute layer indices.
    """
    defs: list[dict[str, Any]] = []

    def conv(c: int, k: int, s: int = 1) -> int:
        defs.append({"type": "conv", "filters": scaled(c, width), "size": k, "stride": s, "bn": True})
        return len(defs) - 1

    def blocks(c: int, n: int) -> int:
        for _ in range(max(1, int(round(n * depth)))):
            conv(c // 2, 1)
            conv(c, 3)
            defs.append({"type": "shortcut", "from": len(defs) - 3})
        return len(defs) - 1

    conv(32, 3)
    stage_out = []
    for c, n in ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)):
        conv(c, 3, 2)  # downsample
        stage_out.append(blocks(c, n))
    outputs = 3 * (5 + num_classes)
    for h, c in enumerate((512, 256, 128)):  # heads at strides 32, 16, 8
        if h > 0:
            defs.append({"type": "route", "layers": [len(defs) - 4]})  # back to the 5th 1x1 of the last head
            conv(c, 1)
            defs.append({"type": "upsample", "stride": 2})
            defs.append({"type": "route", "layers": [len(defs) - 1, stage_out[4 - h]]})
        for _ in range(3):
            conv(c, 1)
            conv(2 * c, 3)
        defs.append({"type": "conv", "filters": outputs, "size": 1, "stride": 1, "bn": False})
        defs.append({"type": "yolo", "mask": list(MASKS[h])})
    return defs


class DarknetConv(nn.Module):
    """conv (no bias) + BN + LeakyReLU(0.1), or a linear conv with bias (the output layers)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        # not in place: forward hooks on BN (ThiNet, sketching) must see the pre-activation tensor
        self.act = nn.LeakyReLU(0.1) if bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class YOLOv3(nn.Module):
    """Darknet-53 + YOLOv3 head; ``layers[str(i)]`` is Darknet layer ``i`` (convs and upsamples)."""

    def __init__(self, defs: Sequence[dict[str, Any]], img_size: int = 608) -> None:
        super().__init__()
        self.defs = [dict(d) for d in defs]
        self.layers = nn.ModuleDict()
        channels: list[int] = []
        c = 3
        for i, d in enumerate(self.defs):
            if d["type"] == "conv":
                self.layers[str(i)] = DarknetConv(c, d["filters"], d["size"], d["stride"], d["bn"])
                c = d["filters"]
            elif d["type"] == "upsample":
                self.layers[str(i)] = nn.Upsample(scale_factor=d["stride"], mode="nearest")
            elif d["type"] == "route":
                c = sum(channels[j] for j in d["layers"])
            channels.append(c)
        # outputs read again later (shortcut sources, route inputs): the only ones kept in forward
        self._reused = {d["from"] for d in self.defs if d["type"] == "shortcut"}
        self._reused |= {j for d in self.defs if d["type"] == "route" for j in d["layers"]}
        self.output_layers = [i - 1 for i, d in enumerate(self.defs) if d["type"] == "yolo"]
        self._init_output_bias(img_size)

    def _init_output_bias(self, img_size: int) -> None:
        """Prior-probability init of objectness/class logits (ultralytics ``_initialize_biases``,
        after Lin et al. 2017 focal loss, section 4.1): about 8 objects per 640^2 image, p(cls)=0.6/nc.
        """
        with torch.no_grad():
            for i, stride in zip(self.output_layers, STRIDES):
                conv = self.layers[str(i)].conv
                b = conv.bias.view(3, -1)
                nc = b.shape[1] - 5
                b[:, 4] += math.log(8 / (img_size / stride) ** 2)
                b[:, 5:] += math.log(0.6 / max(nc - 0.99, 0.01))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kept: dict[int, torch.Tensor] = {}
        heads = []
        for i, d in enumerate(self.defs):
            t = d["type"]
            if t == "conv" or t == "upsample":
                x = self.layers[str(i)](x)
            elif t == "shortcut":
                x = x + kept[d["from"]]
            elif t == "route":
                srcs = [kept[j] for j in d["layers"]]
                x = srcs[0] if len(srcs) == 1 else torch.cat(srcs, 1)
            elif t == "yolo":
                heads.append(x)
            if i in self._reused:
                kept[i] = x
        return tuple(heads)

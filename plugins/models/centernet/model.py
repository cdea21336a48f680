"""CenterNet "Objects as Points" (Zhou et al. 2019, arXiv 1904.07850), the official ``res_18``
variant (xingyizhou/CenterNet ``networks/msra_resnet.py``): ResNet-18 C5 (section 4, "ResNet"),
three ConvTranspose2d 4x4 stride-2 stages of 256 filters + BN + ReLU (output stride 4, no
deformable conv), and heads ``hm`` (nc), ``wh`` (2) and ``reg`` (2), each a 3x3 conv of
``head_conv``=64 channels + ReLU + 1x1 conv; the heatmap bias starts at -2.19 (prior 0.1).

15,815,822 parameters for 10 classes. The Global-Information paper quotes 16.37M for a CenterNet
it does not name; that matches neither res_18 with head_conv 64 (15.82M) nor 256 (17.15M), so
detprune builds the official res_18 configuration and says so.

The backbone is assembled from torchvision's ``BasicBlock`` under torchvision's module names, so
at ``width=1`` an ImageNet ResNet-18 state_dict loads into ``backbone`` unchanged. ``width``
scales every channel count (backbone, deconvs, head_conv) for small test and demo models.
The forward returns ``(hm, wh, reg)``, each ``[B, C, H/4, W/4]``, raw (no sigmoid).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from detprune_plugins.models.base import scaled

HEADS = ("hm", "wh", "reg")


class ResNet18Backbone(nn.Module):
    """ResNet-18 up to C5 (stride 32), torchvision layout: conv1/bn1/relu/maxpool/layer1..4."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, planes[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = planes[0]
        for i, p in enumerate(planes):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != p:
                down = nn.Sequential(nn.Conv2d(cin, p, 1, stride=stride, bias=False), nn.BatchNorm2d(p))
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, p, stride, down), BasicBlock(p, p)))
            cin = p
        self.out_channels = cin
        for m in self.modules():  # torchvision's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class CenterNetResNet(nn.Module):
    """``backbone`` -> ``deconv`` (3 x [ConvTranspose2d, BN, ReLU]) -> heads ``hm``, ``wh``, ``reg``."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, head_conv: int = 64) -> None:
        super().__init__()
        self.backbone = ResNet18Backbone(width)
        layers: list[nn.Module] = []
        cin = self.backbone.out_channels
        filters = scaled(256, width)
        for _ in range(3):  # msra_resnet ``_make_deconv_layer(3, [256]*3, [4]*3)``: padding 1, no bias
            layers += [
                nn.ConvTranspose2d(cin, filters, 4, stride=2, padding=1, output_padding=0, bias=False),
                nn.BatchNorm2d(filters),
                nn.ReLU(),
            ]
            cin = filters
        self.deconv = nn.Sequential(*layers)
        hc = scaled(head_conv, width)
        outs = {"hm": num_classes, "wh": 2, "reg": 2}
        for name in HEADS:
            setattr(
                self,
                name,
                nn.Sequential(nn.Conv2d(cin, hc, 3, padding=1, bias=True), nn.ReLU(), nn.Conv2d(hc, outs[name], 1)),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        """msra_resnet ``init_weights``: deconv N(0, 0.001), BN 1/0, hm bias -2.19, wh/reg last conv N(0, 0.001)."""
        for m in self.deconv.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.hm[2].bias, -2.19)
        for name in ("wh", "reg"):
            nn.init.normal_(getattr(self, name)[2].weight, std=0.001)
            nn.init.zeros_(getattr(self, name)[2].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.deconv(self.backbone(x))
        return self.hm(x), self.wh(x), self.reg(x)

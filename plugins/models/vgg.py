"""VGG-16 for CIFAR, as in the Network Slimming code (Liu et al. 2017, Eric-mingjie/network-slimming
``models/vgg.py``) that the Global-Information paper pruned: 13 conv3x3-BN-ReLU layers without conv
bias, 2x2 max-pools, a final 2x2 average pool and one Linear classifier. 14,724,042 parameters for
10 classes (the paper's 14.72M), 14,770,212 for 100.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import detprune
from detprune_plugins.models.base import AdapterArgumentError, ClassifierAdapter, scaled

#: network-slimming ``defaultcfg[16]``: channel counts, "M" = 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGGCifar(nn.Module):
    """``features`` (conv-BN-ReLU stack) -> AvgPool2d(2) -> flatten -> ``classifier`` (Linear)."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            # ReLU not in place: forward hooks on BN (ThiNet, sketching) must see the pre-ReLU tensor.
            layers += [nn.Conv2d(cin, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
            cin = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """network-slimming ``_initialize_weights``: He-normal convs, BN gamma 0.5, Linear N(0, 0.01)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class VGG16Cifar(ClassifierAdapter):
    """VGG-16 for 32x32 CIFAR images (Network Slimming variant: BN, one Linear; 14.72M params)."""

    name = "vgg16-cifar"

    def __init__(self, num_classes: int = 10, img_size: int = 32, width: float = 1.0) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size, width=width)
        if img_size % 32:
            raise AdapterArgumentError(
                f"adapter 'vgg16-cifar': img_size must be a multiple of 32 (five 2x pools), got {img_size}"
            )

    def build(self) -> nn.Module:
        w = self.args["width"]
        cfg = tuple(v if v == "M" else scaled(int(v), w) for v in VGG16_CFG)
        model = VGGCifar(cfg, self.args["num_classes"])
        if self.args["img_size"] != 32:  # the classifier reads (img_size/32)^2 positions per channel
            k = self.args["img_size"] // 32
            model.classifier = nn.Linear(cfg[-1] * k * k, self.args["num_classes"])
            nn.init.normal_(model.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(model.classifier.bias)
        return model


@detprune.hookimpl
def detprune_model_adapters():
    return {"vgg16-cifar": VGG16Cifar}

"""ResNets: the CIFAR ResNet-56 of He et al. 2016 (section 4.2) that FilterSketch, FPGM/SFP and
ThiNet prune, and the ImageNet ResNet-18/50 straight from torchvision (random init, no download).

ResNet-56 follows lmbxmu/FilterSketch ``model/resnet.py``: 3 stages of 9 basic blocks (16/32/64
channels), option-A shortcuts (stride-2 subsampling + zero channel padding, no parameters):
853,018 parameters for 10 classes. ``shortcut="B"`` swaps in 1x1 conv + BN projections.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import detprune
from detprune_plugins.models.base import (
    AdapterArgumentError,
    ClassifierAdapter,
    scaled,
    without_inplace,
)


class PadShortcut(nn.Module):
    """Option A (He et al. 2016, 4.2): take every other pixel, pad the new channels with zeros."""

    def __init__(self, pad_before: int, pad_after: int) -> None:
        super().__init__()
        self.pad_before, self.pad_after = pad_before, pad_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad_before, self.pad_after))


class CifarBasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                extra = cout - cin
                self.shortcut = PadShortcut(extra // 2, extra - extra // 2)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv-BN-ReLU stem, three stages of ``n`` basic blocks, global average pool, ``fc``."""

    def __init__(self, depth: int = 56, num_classes: int = 10, width: float = 1.0, shortcut: str = "A") -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise AdapterArgumentError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        planes = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(3, planes[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        cin = planes[0]
        stages = []
        for i, p in enumerate(planes):
            blocks = []
            for b in range(n):
                blocks.append(CifarBasicBlock(cin, p, 2 if (i > 0 and b == 0) else 1, shortcut))
                cin = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # FilterSketch ``initialize``
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet56Cifar(ClassifierAdapter):
    """ResNet-56 for 32x32 CIFAR images (He et al. 2016, option-A shortcuts; 0.85M params)."""

    name = "resnet56-cifar"

    def __init__(self, num_classes: int = 10, img_size: int = 32, width: float = 1.0, shortcut: str = "A") -> None:
        """
        :param shortcut: ``A`` (He et al.'s parameter-free pad shortcut) or ``B`` (1x1 conv + BN projections).
        """
        super().__init__(num_classes=num_classes, img_size=img_size, width=width, shortcut=shortcut)
        if shortcut not in ("A", "B"):
            raise AdapterArgumentError(f"adapter 'resnet56-cifar': shortcut must be 'A' or 'B', got {shortcut!r}")

    def build(self) -> nn.Module:
        a = self.args
        return CifarResNet(56, a["num_classes"], a["width"], a["shortcut"])


class _TorchvisionResNet(ClassifierAdapter):
    builder = "resnet18"

    def __init__(self, num_classes: int = 1000, img_size: int = 224) -> None:
        super().__init__(num_classes=num_classes, img_size=img_size)

    def build(self) -> nn.Module:
        model = getattr(torchvision.models, self.builder)(weights=None, num_classes=self.args["num_classes"])
        return without_inplace(model)


class ResNet18(_TorchvisionResNet):
    """ResNet-18 for ImageNet-size inputs (torchvision builder, random init; 11.69M params)."""

    name = builder = "resnet18"


class ResNet50(_TorchvisionResNet):
    """ResNet-50 for ImageNet-size inputs (torchvision builder, random init; 25.56M params)."""

    name = builder = "resnet50"


@detprune.hookimpl
def detprune_model_adapters():
    return {"resnet56-cifar": ResNet56Cifar, "resnet18": ResNet18, "resnet50": ResNet50}

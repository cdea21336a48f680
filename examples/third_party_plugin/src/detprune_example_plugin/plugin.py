"""A complete third-party plugin: a criterion and a model adapter, found via entry points."""

from __future__ import annotations

import torch
from torch import nn

import detprune


class MeanAbs(detprune.Criterion):
    """Mean absolute producer weight per channel (a scale-free cousin of L1)."""

    def score(self, model: nn.Module, group, ctx) -> torch.Tensor:
        return group.reduce(model, lambda rows: rows.abs().mean(dim=1), role="out")


class TinyCNN(detprune.ModelAdapter):
    """A three-layer CNN classifier for 32x32 images, for tests and tutorials."""

    task = "classification"

    def __init__(self, num_classes: int = 10, width: int = 16):
        """
        :param num_classes: classes the model predicts.
        :param width: channels of the first conv (the second has twice as many).
        """
        self.args = {"num_classes": num_classes, "width": width}

    def build(self) -> nn.Module:
        w, n = self.args["width"], self.args["num_classes"]
        return nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, n),
        )

    def example_inputs(self, batch_size: int = 1):
        return (torch.randn(batch_size, 3, 32, 32),)

    def loss(self, outputs, targets):
        loss = nn.functional.cross_entropy(outputs, targets)
        return loss, {"ce": float(loss.detach())}

    def decode(self, outputs, metas=None):
        return list(outputs.softmax(dim=1))

    def protected(self, model: nn.Module) -> list[str]:
        return ["8"]  # the final Linear: its outputs are the class logits


@detprune.hookimpl
def detprune_criteria():
    return {"mean-abs": MeanAbs}


@detprune.hookimpl
def detprune_model_adapters():
    return {"tiny-cnn": TinyCNN}

"""The ``centernet-resnet18`` model adapter: build args, the focal/L1 loss (:mod:`.loss`), peak
decoding (:mod:`.decode`) and the protected head convs."""

from __future__ import annotations

from torch import nn

import detprune
from detprune_plugins.models.base import (
    AdapterArgumentError,
    AdapterBase,
    without_inplace,
)
from detprune_plugins.models.centernet.decode import decode
from detprune_plugins.models.centernet.loss import centernet_loss
from detprune_plugins.models.centernet.model import HEADS, CenterNetResNet


class CenterNetResNet18(AdapterBase):
    """CenterNet res_18: ResNet-18 + 3 deconvs, heatmap/size/offset heads (15.82M params, 10 classes)."""

    name = "centernet-resnet18"
    task = "detection"

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 608,
        width: float = 1.0,
        head_conv: int = 64,
        radius: str = "cornernet",
        max_det: int = 500,
    ) -> None:
        """
        :param head_conv: channels of each head's 3x3 conv (64 for ResNets in the paper's code).
        :param radius: Gaussian radius rule of the heatmap targets: ``cornernet`` (the original, with its
            known quirk) or ``fixed``.
        :param max_det: peaks kept per image at decoding (VisDrone images hold up to ~460 objects).
        """
        super().__init__(
            num_classes=num_classes, img_size=img_size, width=width, head_conv=head_conv, radius=radius, max_det=max_det
        )
        if img_size % 32:
            raise AdapterArgumentError(
                f"adapter 'centernet-resnet18': img_size must be a multiple of 32, got {img_size}"
            )
        if radius not in ("cornernet", "fixed"):
            raise AdapterArgumentError(
                f"adapter 'centernet-resnet18': radius must be 'cornernet' or 'fixed', got {radius!r}"
            )
        if not isinstance(max_det, int) or max_det < 1:
            raise AdapterArgumentError(
                f"adapter 'centernet-resnet18': max_det must be a positive integer, got {max_det!r}"
            )

    def build(self) -> nn.Module:
        a = self.args
        return without_inplace(CenterNetResNet(a["num_classes"], a["width"], a["head_conv"]))

    def loss(self, outputs, targets):
        return centernet_loss(outputs, targets, self.args["num_classes"], radius=self.args["radius"])

    def decode(self, outputs, metas=None, conf: float = 0.1, nms_iou: float | None = None, max_det: int | None = None):
        """Peaks of the heatmap (3x3 max-pool NMS), top ``max_det`` (default 500); ``nms_iou`` is
        accepted for a uniform detector interface and unused: CenterNet needs no box NMS (section 4)."""
        return decode(outputs, metas, conf=conf, k=max_det or self.args["max_det"])

    def protected(self, model: nn.Module) -> list[str]:
        """The three final 1x1 convs: heatmap classes, box size, centre offset."""
        return [f"{name}.2" for name in HEADS]


@detprune.hookimpl
def detprune_model_adapters():
    return {"centernet-resnet18": CenterNetResNet18}

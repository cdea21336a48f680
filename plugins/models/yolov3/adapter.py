"""The ``yolov3`` model adapter: build args (classes, width, depth, anchors, loss settings), the
loss (:mod:`.loss`), decoding (:mod:`.decode`) and the protected output convs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

import detprune
from detprune_plugins.models.base import AdapterArgumentError, AdapterBase
from detprune_plugins.models.yolov3.decode import decode
from detprune_plugins.models.yolov3.loss import YOLOv3Loss
from detprune_plugins.models.yolov3.model import DARKNET_ANCHORS, YOLOv3, darknet_layers


def check_anchors(anchors: Any) -> list[list[float]]:
    """Nine positive ``[w, h]`` pairs in network-input pixels, small to large."""
    try:
        pairs = [[float(w), float(h)] for w, h in anchors]
    except (TypeError, ValueError) as exc:
        raise AdapterArgumentError(f"adapter 'yolov3': anchors must be 9 [w, h] pairs, got {anchors!r}") from exc
    if len(pairs) != 9 or any(w <= 0 or h <= 0 for w, h in pairs):
        raise AdapterArgumentError(f"adapter 'yolov3': anchors must be 9 positive [w, h] pairs, got {anchors!r}")
    return pairs


class YOLOv3Adapter(AdapterBase):
    """YOLOv3 / Darknet-53, three scales (SlimYOLOv3's baseline; 61.57M params for 10 classes)."""

    name = "yolov3"
    task = "detection"

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 608,
        width: float = 1.0,
        depth: float = 1.0,
        anchors: Sequence[Sequence[float]] | None = None,
        match: str = "ratio",
        hyp: dict[str, float] | None = None,
    ) -> None:
        """
        :param anchors: nine ``[w, h]`` pairs in input pixels, small to large (default Darknet's COCO anchors;
            ``detprune anchors`` fits them to a dataset).
        :param match: target assignment: ``ratio`` (ultralytics' anchor-ratio rule, ``anchor_t``) or ``iou``
            (anchors whose shape IoU with the box exceeds ``iou_t``).
        :param hyp: loss settings (gains of box/obj/cls, IoU threshold ...): see ``YOLOv3Loss.HYP``.
        """
        anchors = check_anchors(DARKNET_ANCHORS if anchors is None else anchors)
        super().__init__(
            num_classes=num_classes,
            img_size=img_size,
            width=width,
            depth=depth,
            anchors=anchors,
            match=match,
            hyp=dict(hyp or {}),
        )
        if img_size % 32:
            raise AdapterArgumentError(f"adapter 'yolov3': img_size must be a multiple of 32, got {img_size}")
        unknown = sorted(set(self.args["hyp"]) - set(YOLOv3Loss.HYP))
        if unknown:
            raise AdapterArgumentError(
                f"adapter 'yolov3': unknown loss setting(s) {unknown} in hyp; known: {', '.join(YOLOv3Loss.HYP)}"
            )
        self._loss = YOLOv3Loss(anchors, num_classes, match=match, **self.args["hyp"])

    def build(self) -> nn.Module:
        a = self.args
        return YOLOv3(darknet_layers(a["num_classes"], a["width"], a["depth"]), a["img_size"])

    def loss(self, outputs, targets):
        return self._loss(outputs, targets)

    def decode(self, outputs, metas=None, conf: float = 0.1, nms_iou: float = 0.5, max_det: int = 500):
        return decode(
            outputs, self.args["anchors"], self.args["num_classes"], metas, conf=conf, nms_iou=nms_iou, max_det=max_det
        )

    def protected(self, model: nn.Module) -> list[str]:
        """The three linear 1x1 output convs: their channels are (box, objectness, classes) x 3."""
        return [f"layers.{i}.conv" for i in model.output_layers]


@detprune.hookimpl
def detprune_model_adapters():
    return {"yolov3": YOLOv3Adapter}

"""YOLOv3 training loss as in the ultralytics/yolov3 code SlimYOLOv3 trained with
(``utils/utils.py`` ``compute_loss`` / ``build_targets``, archive branch):

* every target is matched to every anchor of every output whose shape fits: ``match="ratio"``
  keeps anchors with max(w/a_w, a_w/w, h/a_h, a_h/h) < ``anchor_t`` (4.0); ``match="iou"`` keeps
  anchors whose centre-aligned width/height IoU exceeds ``iou_t`` (0.20);
* the matched cell predicts xy = sigmoid(t_xy) (cell offset) and wh = exp(t_wh) * anchor
  (YOLOv3 paper, section 2.1); box loss = mean(1 - GIoU) (Rezatofighi et al. 2019);
* objectness BCE over all cells, target = ``gr`` * GIoU.detach().clamp(0) + (1 - ``gr``) at
  matched cells, 0 elsewhere; class BCE (independent logistics, YOLOv3 section 2.2) at matched
  cells, skipped for one class;
* total = ``giou`` * box + ``obj`` * objectness + ``cls`` * class (gains of the archive ``hyp``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss

from detprune_plugins.models.base import AdapterArgumentError, targets_on
from detprune_plugins.models.yolov3.model import MASKS


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of centre-aligned boxes given only width/height: ``[N, 2] x [M, 2] -> [N, M]``."""
    inter = torch.min(wh1[:, None], wh2[None]).prod(2)
    return inter / (wh1.prod(1)[:, None] + wh2.prod(1)[None] - inter)


class YOLOv3Loss:
    """Callable ``(outputs, targets) -> (loss, {"box", "obj", "cls"})`` for raw YOLOv3 outputs."""

    HYP = ("anchor_t", "iou_t", "giou", "obj", "cls", "gr")  # settable through the adapter's ``hyp``

    def __init__(
        self,
        anchors: Sequence[Sequence[float]],
        num_classes: int,
        match: str = "ratio",
        anchor_t: float = 4.0,
        iou_t: float = 0.20,
        giou: float = 3.54,
        obj: float = 64.3,
        cls: float = 37.4,
        gr: float = 1.0,
    ) -> None:
        if match not in ("ratio", "iou"):
            raise AdapterArgumentError(f"adapter 'yolov3': match must be 'ratio' or 'iou', got {match!r}")
        self.anchors = torch.tensor(anchors, dtype=torch.float32)
        self.nc = num_classes
        self.match, self.anchor_t, self.iou_t = match, anchor_t, iou_t
        self.gains = {"box": giou, "obj": obj, "cls": cls}
        self.gr = gr

    def match_anchors(self, wh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``[3, nt]`` bool: which of one output's anchors each target (w, h) may use."""
        if self.match == "ratio":
            r = wh[None] / anchors[:, None]
            return torch.max(r, 1.0 / r).max(2).values < self.anchor_t
        return wh_iou(anchors, wh) > self.iou_t

    def build_targets(self, outputs, targets):
        """Per output: indices (image, anchor, gy, gx), target boxes (cx, cy, w, h in cell units
        relative to the cell), the matched anchors (cell units) and the classes."""
        device = outputs[0].device
        rows = []
        for b, (boxes, labels) in enumerate(targets_on(targets, outputs[0].shape[0], device, self.nc)):
            cxcywh = box_convert(boxes, "xyxy", "cxcywh")
            ok = (cxcywh[:, 2] > 0) & (cxcywh[:, 3] > 0)  # a zero-size box fits no anchor
            n = int(ok.sum())
            rows.append(
                torch.cat([torch.full((n, 1), float(b), device=device), labels[ok, None].float(), cxcywh[ok]], 1)
            )
        t = torch.cat(rows) if rows else torch.zeros(0, 6, device=device)
        built = []
        img_h = outputs[-1].shape[2] * 8  # finest output has stride 8 (strides 32/16/8)
        for pi, mask in zip(outputs, MASKS):
            h, w = pi.shape[2], pi.shape[3]
            stride = img_h / h
            anchors = self.anchors[list(mask)].to(device) / stride
            tg = t.clone()
            tg[:, 2:] /= stride
            j = (
                self.match_anchors(tg[:, 4:6], anchors)
                if len(tg)
                else torch.zeros(3, 0, dtype=torch.bool, device=device)
            )
            a = torch.arange(3, device=device)[:, None].expand_as(j)[j]
            tg = tg[None].expand(3, -1, -1)[j]
            gxy = tg[:, 2:4]
            gi = gxy[:, 0].long().clamp(0, w - 1)
            gj = gxy[:, 1].long().clamp(0, h - 1)
            tbox = torch.cat([gxy - torch.stack([gi, gj], 1), tg[:, 4:6]], 1)
            built.append(((tg[:, 0].long(), a, gj, gi), tbox, anchors[a], tg[:, 1].long()))
        return built

    def __call__(self, outputs, targets) -> tuple[torch.Tensor, dict[str, float]]:
        if len(outputs) != 3:
            raise AdapterArgumentError(f"yolov3 loss expects the model's 3 outputs, got {len(outputs)}")
        parts = {k: outputs[0].new_zeros(()) for k in self.gains}
        for pi, ((b, a, gj, gi), tbox, anchors, tcls) in zip(outputs, self.build_targets(outputs, targets)):
            bs, _, h, w = pi.shape
            p = pi.view(bs, 3, 5 + self.nc, h, w).permute(0, 1, 3, 4, 2)
            tobj = torch.zeros_like(p[..., 4])
            if len(b):
                ps = p[b, a, gj, gi]
                pbox = torch.cat([ps[:, :2].sigmoid(), ps[:, 2:4].exp().clamp(max=1e3) * anchors], 1)
                lbox = generalized_box_iou_loss(
                    box_convert(pbox, "cxcywh", "xyxy"), box_convert(tbox, "cxcywh", "xyxy"), reduction="none"
                )
                parts["box"] = parts["box"] + lbox.mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * (1.0 - lbox.detach()).clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    parts["cls"] = parts["cls"] + F.binary_cross_entropy_with_logits(
                        ps[:, 5:], F.one_hot(tcls, self.nc).to(ps.dtype)
                    )
            parts["obj"] = parts["obj"] + F.binary_cross_entropy_with_logits(p[..., 4], tobj)
        total = sum(self.gains[k] * parts[k] for k in parts)
        return total, {k: float(v.detach()) for k, v in parts.items()}

"""YOLOv3 outputs to detections (YOLOv3 paper, section 2.1; darknet ``get_yolo_box``):
b_xy = (sigmoid(t_xy) + c_xy) * stride, b_wh = anchor * exp(t_wh), score = sigmoid(obj) *
sigmoid(cls) per class (objectness alone for one class). Every (box, class) pair above ``conf``
is a candidate; class-wise NMS by ``torchvision.ops.batched_nms``; the best ``max_det`` survive;
boxes go back to original image pixels through the letterbox inverse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torchvision.ops import batched_nms, box_convert

from detprune_plugins.models.base import finish_detections, metas_for
from detprune_plugins.models.yolov3.model import MASKS

#: candidates kept (by score) before NMS, as ultralytics ``max_nms``: NMS cost grows as n^2.
MAX_CANDIDATES = 30000


def boxes_and_scores(outputs: Sequence[torch.Tensor], anchors: Sequence[Sequence[float]], num_classes: int):
    """All predicted boxes ``[B, N, 4]`` (xyxy, network-input pixels) and class scores ``[B, N, nc]``."""
    img_h = outputs[-1].shape[2] * 8
    all_boxes, all_scores = [], []
    for pi, mask in zip(outputs, MASKS):
        bs, _, h, w = pi.shape
        stride = img_h / h
        p = pi.detach().float().view(bs, 3, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2)
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij")
        grid = torch.stack([gx, gy], -1).float()  # [h, w, 2]
        anchor_wh = torch.tensor([anchors[m] for m in mask], device=p.device, dtype=p.dtype).view(1, 3, 1, 1, 2)
        xy = (p[..., :2].sigmoid() + grid) * stride
        wh = p[..., 2:4].exp().clamp(max=1e3) * anchor_wh
        obj = p[..., 4:5].sigmoid()
        scores = obj * p[..., 5:].sigmoid() if num_classes > 1 else obj
        all_boxes.append(box_convert(torch.cat([xy, wh], -1), "cxcywh", "xyxy").reshape(bs, -1, 4))
        all_scores.append(scores.reshape(bs, -1, num_classes))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)


def decode(
    outputs: Sequence[torch.Tensor],
    anchors: Sequence[Sequence[float]],
    num_classes: int,
    metas: Sequence[Mapping[str, Any]] | None = None,
    conf: float = 0.1,
    nms_iou: float = 0.5,
    max_det: int = 500,
) -> list[dict[str, Any]]:
    """One ``{"boxes", "scores", "labels"[, "image_id"]}`` per image, best first."""
    boxes, scores = boxes_and_scores(outputs, anchors, num_classes)
    results = []
    for b, meta in enumerate(metas_for(metas, boxes.shape[0])):
        idx, cls = (scores[b] > conf).nonzero(as_tuple=True)
        s = scores[b, idx, cls]
        if s.numel() > MAX_CANDIDATES:
            top = s.topk(MAX_CANDIDATES).indices
            idx, cls, s = idx[top], cls[top], s[top]
        bx = boxes[b, idx]
        keep = batched_nms(bx, s, cls, nms_iou)[:max_det]  # sorted by decreasing score
        results.append(finish_detections(bx[keep], s[keep], cls[keep], meta))
    return results

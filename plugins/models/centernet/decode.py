"""CenterNet outputs to detections (Zhou et al. 2019, section 4 "inference"; ``models/decode.py``
``ctdet_decode``): sigmoid heatmap, peaks = points equal to their 3x3 max-pool (this replaces box
NMS), top-K over classes x positions, box = (x + dx +- w/2, y + dy +- h/2) x 4 in network-input
pixels, then the letterbox inverse. K defaults to 500 (VisDrone holds up to 461 objects per image;
the reference's K=100 is for COCO).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from detprune_plugins.models.base import finish_detections, metas_for
from detprune_plugins.models.centernet.loss import DOWN_RATIO, gather


def peaks(heat: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """``_nms``: keep a heatmap value only where it equals the max of its neighbourhood."""
    hmax = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (hmax == heat).to(heat.dtype)


def decode(
    outputs: Sequence[torch.Tensor], metas: Sequence[Mapping[str, Any]] | None = None, conf: float = 0.1, k: int = 500
) -> list[dict[str, Any]]:
    """One ``{"boxes", "scores", "labels"[, "image_id"]}`` per image, best first, scores > ``conf``."""
    hm, wh, reg = (o.detach().float() for o in outputs)
    bsz, nc, h, w = hm.shape
    heat = peaks(hm.sigmoid()).reshape(bsz, -1)
    k = min(k, heat.shape[1])
    scores, inds = heat.topk(k, dim=1)
    labels = torch.div(inds, h * w, rounding_mode="floor")
    pix = inds % (h * w)
    ys = torch.div(pix, w, rounding_mode="floor").float()
    xs = (pix % w).float()
    results = []
    for b, meta in enumerate(metas_for(metas, bsz)):
        idx = torch.full_like(pix[b], b)
        off, size = gather(reg, idx, pix[b]), gather(wh, idx, pix[b])
        cx, cy = xs[b] + off[:, 0], ys[b] + off[:, 1]
        boxes = torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], 1)
        keep = scores[b] > conf
        results.append(finish_detections(boxes[keep] * DOWN_RATIO, scores[b][keep], labels[b][keep], meta))
    return results

"""CenterNet training targets and loss (Zhou et al. 2019, section 3; xingyizhou/CenterNet
``datasets/sample/ctdet.py``, ``utils/image.py``, ``models/losses.py``, ``trains/ctdet.py``).

Targets are built here, from the batch's xyxy boxes, at output stride 4: each box (clipped to
the output map) splats a Gaussian of radius ``gaussian_radius((ceil h, ceil w), 0.7)`` and sigma
(2r+1)/6 at its integer centre into its class channel (element-wise max where objects overlap);
size target (w, h) and offset target centre - floor(centre), in output pixels. There is no cap
on objects per image (the reference's ``max_objs=128`` silently drops VisDrone objects).

L = L_k + 0.1 L_size + 1 L_off: L_k the penalty-reduced focal loss (alpha 2, beta 4) on the
clamped sigmoid, divided by the number of objects; L1 size and offset at the object centres,
divided by the number of regressed values (``RegL1Loss``: mask.sum() + 1e-4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from detprune_plugins.models.base import targets_on

DOWN_RATIO = 4
WEIGHTS = {"hm": 1.0, "wh": 0.1, "off": 1.0}


def gaussian_radius(h: torch.Tensor, w: torch.Tensor, min_overlap: float = 0.7, fixed: bool = False) -> torch.Tensor:
    """Radius such that a box whose corners move by it still has IoU >= ``min_overlap`` with the
    original (CornerNet section 3.1). ``fixed=False`` reproduces the reference code exactly, with
    its known slip (roots (b + sqrt)/2 instead of (b - sqrt)/2a; CenterNet #116, PR #171), which
    the author kept because it did not hurt accuracy; ``fixed=True`` uses the corrected roots."""
    h, w = h.double(), w.double()
    a1, b1, c1 = 1.0, h + w, w * h * (1 - min_overlap) / (1 + min_overlap)
    sq1 = torch.sqrt(b1**2 - 4 * a1 * c1)
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - min_overlap) * w * h
    sq2 = torch.sqrt(b2**2 - 4 * a2 * c2)
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (h + w), (min_overlap - 1) * w * h
    sq3 = torch.sqrt(b3**2 - 4 * a3 * c3)
    if fixed:
        r1, r2, r3 = (b1 - sq1) / (2 * a1), (b2 - sq2) / (2 * a2), (b3 + sq3) / (2 * a3)
    else:
        r1, r2, r3 = (b1 + sq1) / 2, (b2 + sq2) / 2, (b3 + sq3) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def draw_heatmap(
    centers: torch.Tensor,
    radii: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    out_h: int,
    out_w: int,
    chunk: int = 64,
) -> torch.Tensor:
    """``draw_umich_gaussian`` for all objects at once: ``[num_classes, out_h, out_w]``.

    The Gaussian exp(-(dx^2 + dy^2) / 2 sigma^2) inside the (2r+1)^2 window is separable, so each
    object's splat is the outer product of a row and a column profile (zero outside the window);
    objects are merged by a per-class max. The reference's eps cut-off never fires inside the
    window (the smallest value is exp(-9)), so it is omitted.
    """
    hm = torch.zeros(num_classes, out_h, out_w, device=centers.device)
    if not len(centers):
        return hm
    sigma = (2 * radii.double() + 1) / 6
    ys = torch.arange(out_h, device=centers.device, dtype=torch.float64)
    xs = torch.arange(out_w, device=centers.device, dtype=torch.float64)
    dx = xs[None] - centers[:, 0, None].double()
    dy = ys[None] - centers[:, 1, None].double()
    gx = torch.exp(-(dx**2) / (2 * sigma[:, None] ** 2)) * (dx.abs() <= radii[:, None])
    gy = torch.exp(-(dy**2) / (2 * sigma[:, None] ** 2)) * (dy.abs() <= radii[:, None])
    for s in range(0, len(centers), chunk):
        splat = (gy[s : s + chunk, :, None] * gx[s : s + chunk, None, :]).float()
        index = labels[s : s + chunk, None, None].expand_as(splat)
        hm.scatter_reduce_(0, index, splat, "amax")
    return hm


def build_targets(
    boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, out_h: int, out_w: int, radius: str = "cornernet"
) -> dict[str, torch.Tensor]:
    """One image's targets: ``hm [C,H,W]``, and per kept object ``ind`` (y*W+x), ``wh``, ``reg``."""
    b = boxes / DOWN_RATIO
    b[:, [0, 2]] = b[:, [0, 2]].clamp(0, out_w - 1)
    b[:, [1, 3]] = b[:, [1, 3]].clamp(0, out_h - 1)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ok = (w > 0) & (h > 0)
    b, w, h, labels = b[ok], w[ok], h[ok], labels[ok]
    r = gaussian_radius(torch.ceil(h), torch.ceil(w), fixed=(radius == "fixed")).clamp(min=0).floor().long()
    ct = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
    ct_int = ct.long()  # centres are >= 0, so truncation is the reference's astype(int32)
    return {
        "hm": draw_heatmap(ct_int, r, labels, num_classes, out_h, out_w),
        "ind": ct_int[:, 1] * out_w + ct_int[:, 0],
        "wh": torch.stack([w, h], 1),
        "reg": ct - ct_int,
    }


def focal_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss (paper eq. 1, ``losses._neg_loss``), alpha 2, beta 4."""
    pos = gt.eq(1).float()
    neg = 1.0 - pos
    pos_loss = (torch.log(pred) * (1 - pred) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred**2 * (1 - gt) ** 4 * neg).sum()
    num_pos = pos.sum()
    return -neg_loss if num_pos == 0 else -(pos_loss + neg_loss) / num_pos


def gather(feat: torch.Tensor, batch_idx: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` values at flat positions ``ind`` of images ``batch_idx``: ``[N, C]``."""
    b, c = feat.shape[:2]
    return feat.reshape(b, c, -1)[batch_idx, :, ind]


def centernet_loss(
    outputs: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]], num_classes: int, radius: str = "cornernet"
) -> tuple[torch.Tensor, dict[str, float]]:
    """``(loss, {"hm", "wh", "off"})`` for raw outputs ``(hm, wh, reg)`` and xyxy input-pixel targets."""
    hm_out, wh_out, reg_out = outputs
    bsz, _, out_h, out_w = hm_out.shape
    built = [
        build_targets(boxes, labels, num_classes, out_h, out_w, radius)
        for boxes, labels in targets_on(targets, bsz, hm_out.device, num_classes)
    ]
    gt_hm = torch.stack([t["hm"] for t in built])
    batch_idx = torch.cat([torch.full_like(t["ind"], i) for i, t in enumerate(built)])
    ind = torch.cat([t["ind"] for t in built])
    pred = torch.clamp(hm_out.float().sigmoid(), 1e-4, 1 - 1e-4)  # ``_sigmoid``
    parts = {"hm": focal_loss(pred, gt_hm)}
    n_values = 2 * len(ind) + 1e-4  # RegL1Loss: the mask is expanded to both channels
    for key, out, tkey in (("wh", wh_out, "wh"), ("off", reg_out, "reg")):
        target = torch.cat([t[tkey] for t in built]).to(out.dtype)
        parts[key] = F.l1_loss(gather(out, batch_idx, ind), target, reduction="sum") / n_values
    total = sum(WEIGHTS[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}

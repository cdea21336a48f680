"""Batching detection samples whose box counts differ."""
from __future__ import annotations

from typing import Sequence

import torch


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict, dict]]) -> tuple[torch.Tensor, list[dict], list[dict]]:
    """``[(image, target, meta), ...]`` -> ``(images [B, 3, H, W], [target, ...], [meta, ...])``.

    Images must share one size (letterboxed); targets and metas stay per-image lists.
    """
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    images, targets, metas = zip(*batch)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images in a batch differ in size {sorted(shapes)}: build the dataset with img_size")
    return torch.stack(images), list(targets), list(metas)


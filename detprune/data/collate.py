"""Batching detection samples whose box counts differ, and moving such batches between devices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def move_batch(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """The tensors of a nested batch (lists, tuples, dicts kept; other leaves as they are) on ``device``.

    ``non_blocking`` only for host-to-device copies from pinned memory (the Trainer's loader): a
    non-blocking copy back to the host may be read before it lands.
    """
    if torch.is_tensor(obj):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_batch(o, device, non_blocking) for o in obj)
    if isinstance(obj, dict):
        return {k: move_batch(v, device, non_blocking) for k, v in obj.items()}
    return obj

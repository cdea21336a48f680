"""What plugins that sample training images share: a seeded block (the same seed draws the same
images, and the caller's random streams are left as they were) and the images of a loader batch."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Fix python, numpy and torch RNGs (data shuffling, augmentation, workers) and restore them after."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def batch_images(batch: Any, who: str, error: type[Exception] = ValueError) -> torch.Tensor:
    """The image tensor of a loader batch: ``(images, ...)``, ``{"images"|"image"|"img": ...}`` or a tensor;
    else ``error`` naming ``who`` (the plugin that asked)."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("images", "image", "img"):
            if torch.is_tensor(batch.get(key)):
                return batch[key]
    raise error(
        f"{who}cannot find the images in a loader batch of type {type(batch).__name__}: "
        "expected (images, targets, ...), {'images': ...} or an image tensor"
    )

"""What plugins that sample training images share: a seeded block (the same seed draws the same
images, and the caller's random streams are left as they were), the images of a loader batch, and
the loop that feeds the first N of them to a model in eval mode."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from detprune.graph.capture import evaluating


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


def sampled_batches(
    model: nn.Module,
    loader: Iterable[Any],
    images: int,
    seed: int,
    *,
    who: str,
    desc: str,
    empty: str,
    progress: bool = True,
    dtype: torch.dtype | None = None,
    error: type[Exception] = ValueError,
) -> Iterator[torch.Tensor]:
    """The first ``images`` images of ``loader`` as batches on the model's device (floating ones cast to
    ``dtype`` when given), drawn with the RNGs seeded by ``seed`` and the model in eval mode: the caller
    runs the model on each (its hooks record what they need). Empty batches are skipped; a loader that
    gives no image at all raises ``error(empty)``."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    bar = tqdm(total=images, desc=desc, leave=False, disable=not progress)
    try:
        with seeded(seed), evaluating(model):
            for batch in loader:
                x = batch_images(batch, who, error)[: images - seen]
                x = x.to(device=device, dtype=dtype if x.is_floating_point() else None)
                if not len(x):
                    continue
                yield x
                seen += x.shape[0]
                bar.update(x.shape[0])
                if seen >= images:
                    break
    finally:
        bar.close()
    if seen == 0:
        raise error(empty)

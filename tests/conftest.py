"""Shared test fixtures. Real data under ../shared/data is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch thread everywhere (subprocesses too): the test models are tiny, and on a busy 2-core
# machine a second thread mostly spin-waits (measured ~10x slower than one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets beside the checkout; tests using it skip on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present in this checkout")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import torch

    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_colour_folder(root: Path, sizes: dict[str, int]) -> Path:
    """An image-folder dataset: ``root/<split>/{red,blue}/*.png``, 32x32 noise tinted red or blue
    (``sizes[split]`` images per split, half per class) - learnable in a few steps."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in sizes.items():
        for c, name in enumerate(("red", "blue")):
            (root / split / name).mkdir(parents=True)
            for i in range(n // 2):
                img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                img[..., 2 if c == 0 else 0] += 120  # BGR
                cv2.imwrite(str(root / split / name / f"{i}.png"), img)
    return root


PRUNE_CLASSIFIER = "prune --model vgg16-cifar --width 0.125 --device cpu --batch-size 4 --no-progress --no-plots"


def prune_classifier(folder: Path, out: Path, *extra: str, latency_iters: int = 2) -> int:
    """``detprune prune`` of a width-1/8 VGG16-CIFAR on an image folder (CPU, batch 4, no plots)."""
    from detprune.cli import main

    args = [*PRUNE_CLASSIFIER.split(), "--data", str(folder), "--out", str(out), "--latency-iters", str(latency_iters)]
    return main([*args, *extra])

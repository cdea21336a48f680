"""Data of the fidelity benchmarks, in one place so that every method is judged on the same images.

The real CIFAR-10 images of ``cifar10-sample`` in the shared data folder (:mod:`detprune.bench.paths`) when it is
there (balanced subsets: the first files of each class), else 10 classes of synthetic colour
gratings (learnable, not trivial). Everything is held in memory as tensors: the quick runs train
for several epochs on a few thousand 32x32 images, so decoding JPEGs once pays for itself.

    from detprune.bench.fidelity.data import CIFAR, bench_threads, cifar, synthetic, train_test
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import TensorDataset

from detprune.bench.paths import shared_data
from detprune.data import build_dataset, load_card

CIFAR = shared_data("cifar10-sample")


def cifar(split: str, n: int | None, skip: int = 0) -> TensorDataset:
    """A balanced subset of the CIFAR-10 sample: per class, files ``skip .. skip + n/10`` (all when ``n`` is None)."""
    ds = build_dataset(load_card(CIFAR), split=split)
    per_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(ds.samples):
        per_class.setdefault(int(label), []).append(i)
    k = None if n is None else n // len(per_class)
    take = sorted(i for idx in per_class.values() for i in idx[skip : None if k is None else skip + k])
    return TensorDataset(torch.stack([ds[i][0] for i in take]), torch.tensor([int(ds.samples[i][1]) for i in take]))


def synthetic(n: int, seed: int) -> TensorDataset:
    """10 classes of oriented colour gratings under noise: learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angle = labels.float()[:, None, None] * (torch.pi / 10)
    wave = torch.sin((xx * torch.cos(angle) + yy * torch.sin(angle)) * 0.6)
    colour = torch.stack([(labels + k) % 3 == 0 for k in range(3)], 1).float()[:, :, None, None]
    images = 0.5 + 0.2 * wave[:, None] * (0.5 + colour) + 0.25 * torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(images.clamp(0, 1), labels)


def train_test(cfg: dict[str, Any]) -> tuple[TensorDataset, TensorDataset, str]:
    """(train, test, source name) from ``cfg["n_train"]`` / ``cfg["n_test"]`` (None: all images)."""
    if CIFAR.is_dir():
        return cifar("train", cfg["n_train"]), cifar("test", cfg["n_test"]), "cifar10-sample"
    return synthetic(cfg["n_train"] or 5000, 1), synthetic(cfg["n_test"] or 2000, 2), "synthetic gratings"


@contextlib.contextmanager
def bench_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``: as they are), restoring the count after: a
    second thread on a shared 2-core machine only spin-waits, and callers' settings must survive."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

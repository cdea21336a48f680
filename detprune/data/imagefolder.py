"""Image-folder classification datasets: ``<split>/<class>/<image>`` (the cifar10-sample layout).

Class ``i`` is the ``i``-th card class and must be a folder; a class folder the card does not
list is an error (its images would otherwise vanish from training unnoticed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from detprune.data.images import find_images, read_image
from detprune.data.report import DataReport
from detprune.data.transforms import ClassificationTransform, to_tensor
from detprune.errors import DataFormatError


class ImageFolderDataset(Dataset):
    """Samples are ``(image float [3, S, S] in 0..1, label int)``."""

    task = "classification"

    def __init__(
        self,
        folder: str | Path,
        classes: Sequence[str] | None = None,
        *,
        img_size: int | None = 32,
        train: bool = False,
        transform=None,
    ):
        folder = Path(folder)
        if not folder.is_dir():
            raise DataFormatError(f"{folder}: image folder not found")
        present = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        classes = list(classes) if classes is not None else present
        missing = [c for c in classes if c not in present]
        extra = [c for c in present if c not in classes]
        if missing or extra:
            raise DataFormatError(
                f"{folder}: class folders do not match the classes"
                + (f"; missing: {missing}" if missing else "")
                + (f"; not a class: {extra}" if extra else "")
            )
        self.classes = classes
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            imgs = find_images(folder / name)
            if not imgs:
                raise DataFormatError(f"{folder / name}: class folder holds no images")
            self.samples += [(p, label) for p in imgs.values()]
        self.report = DataReport(images=len(self.samples))
        self.report.categories.update(classes[label] for _, label in self.samples)
        self.name = str(folder)
        if transform is None and img_size is not None:
            transform = ClassificationTransform(img_size, train=train)
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = read_image(path)
        return (self.transform(image) if self.transform is not None else to_tensor(image)), label

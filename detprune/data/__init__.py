"""Datasets for detprune: VisDrone-DET, COCO JSON, image folders and a synthetic drone set.

The small API the trainer and the CLI use::

    card = load_card("datasets/visdrone.yaml")      # or a dataset folder (layout detected)
    ds = build_dataset(card, split="val", img_size=608, train=False)
    loader = make_loader(ds, batch_size=8)          # collate_detection for detection sets
    ds.coco_gt()                                    # pycocotools GT for detprune.eval.evaluate

Sample formats are pinned in docs/internals.md §3. The dataset classes are imported inside
:func:`build_dataset`: they pull in albumentations (~0.4 s), which reading a card does not need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detprune.data.card import DatasetCard
from detprune.data.cards import load_card
from detprune.data.collate import collate_detection
from detprune.data.report import DataReport
from detprune.data.synthetic import ensure_default
from detprune.errors import DataFormatError

__all__ = [
    "DatasetCard",
    "DataReport",
    "load_card",
    "build_dataset",
    "make_loader",
    "collate_detection",
    "default_card",
]

DEFAULT_IMG_SIZE = {"detection": 608, "classification": 32}


def build_dataset(
    card: DatasetCard | str | Path,
    split: str | None = None,
    img_size: int | None = None,
    train: bool = False,
    lenient: bool = False,
    transform: Any = None,
):
    """A torch Dataset for one split of a card (or of a card file / dataset folder).

    ``img_size`` defaults to the card's, else 608 (detection) / 32 (classification); ``train``
    switches on augmentation; ``lenient`` skips malformed annotation lines and lists them in
    ``dataset.report`` instead of raising.
    """
    if not isinstance(card, DatasetCard):
        card = load_card(card)
    size = img_size or card.img_size or DEFAULT_IMG_SIZE[card.task]
    key, path, ann = card.split_paths(split)
    if card.format == "visdrone":
        from detprune.data.visdrone import VisDroneDataset

        kwargs = {"annotations_dir": ann, "images_dir": path} if ann is not None else {}
        return VisDroneDataset(
            path,
            card.classes,
            card.category_ids,
            display_root=card.root,
            lenient=lenient,
            img_size=size,
            train=train,
            transform=transform,
            **kwargs,
        )
    if card.format == "coco":
        from detprune.data.coco import CocoDataset

        if ann is None:
            raise DataFormatError(
                f"{card.source}: field 'splits': COCO split {key!r} needs {{images: FOLDER, annotations: FILE.json}}"
            )
        return CocoDataset(
            path, ann, card.classes, card.category_ids, lenient=lenient, img_size=size, train=train, transform=transform
        )
    from detprune.data.imagefolder import ImageFolderDataset

    return ImageFolderDataset(path, card.classes, img_size=size, train=train, transform=transform)


def make_loader(dataset, batch_size: int = 8, shuffle: bool = False, workers: int = 0, **kwargs: Any):
    """A DataLoader with the right collate for the dataset's task."""
    from torch.utils.data import DataLoader

    collate = collate_detection if getattr(dataset, "task", None) == "detection" else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        **kwargs,
    )


def default_card(cache_dir: str | Path | None = None) -> DatasetCard:
    """The embedded synthetic drone dataset (generated into the cache on first use)."""
    return ensure_default(cache_dir)

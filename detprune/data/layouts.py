"""Tell a dataset folder's layout, so ``--data`` can be a folder as well as a card.

* VisDrone: ``annotations/*.txt`` (and ``images/``) in the folder, or in each split sub-folder
  (``val/annotations``, ``VisDrone2019-DET-val/annotations``...).
* COCO: ``annotations/*.json``; split = JSON stem without ``instances_``; images in
  ``<split>/``, ``images/<split>/`` or ``images/`` (the coco128 layout).
* Image folder: one sub-folder per class holding images, either directly (one split) or under
  split folders (``train/<class>/``, ``test/<class>/``: the cifar10-sample layout).
"""

from __future__ import annotations

from pathlib import Path

from detprune.data.card import DatasetCard
from detprune.data.checks import coco_categories, read_json
from detprune.data.images import is_image
from detprune.data.visdrone_parse import VISDRONE_CLASSES
from detprune.errors import DataFormatError


def _is_visdrone_split(p: Path) -> bool:
    ann = p / "annotations"
    return ann.is_dir() and any(f.suffix == ".txt" for f in ann.iterdir())


def _has_images(p: Path) -> bool:
    return any(f.is_file() and is_image(f) for f in p.iterdir())


def _is_class_split(p: Path) -> bool:
    subs = [d for d in p.iterdir() if d.is_dir()]
    return bool(subs) and all(_has_images(d) for d in subs)


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def detect_layout(folder: Path) -> DatasetCard:
    """A card describing ``folder``; an unrecognised layout raises a message listing the three."""
    folder = folder.resolve()
    src = str(folder)
    name = folder.name
    if _is_visdrone_split(folder):
        return DatasetCard(
            name,
            "detection",
            "visdrone",
            folder,
            {name: "."},
            list(VISDRONE_CLASSES),
            list(range(1, 11)),
            (0, 11),
            source=src,
        )
    vis = [d for d in _subdirs(folder) if _is_visdrone_split(d)]
    if vis:
        return DatasetCard(
            name,
            "detection",
            "visdrone",
            folder,
            {d.name: d.name for d in vis},
            list(VISDRONE_CLASSES),
            list(range(1, 11)),
            (0, 11),
            source=src,
        )
    ann = folder / "annotations"
    jsons = sorted(ann.glob("*.json")) if ann.is_dir() else []
    if jsons:
        return _coco_card(folder, jsons)
    if _is_class_split(folder):
        classes = [d.name for d in _subdirs(folder)]
        return DatasetCard(name, "classification", "imagefolder", folder, {name: "."}, classes, source=src)
    splits = [d for d in _subdirs(folder) if _is_class_split(d)]
    if splits:
        classes = [d.name for d in _subdirs(splits[0])]
        return DatasetCard(
            name, "classification", "imagefolder", folder, {d.name: d.name for d in splits}, classes, source=src
        )
    raise DataFormatError(
        f"{folder}: cannot tell the dataset layout; expected one of: VisDrone (annotations/*.txt beside "
        "images/, here or in split folders), COCO (annotations/*.json with an image folder per split), "
        "image folder (one folder of images per class, here or in split folders)"
    )


def _coco_card(folder: Path, jsons: list[Path]) -> DatasetCard:
    splits: dict[str, dict[str, str]] = {}
    for j in jsons:
        split = j.stem.removeprefix("instances_")
        for cand in (folder / split, folder / "images" / split, folder / "images"):
            if cand.is_dir():
                splits[split] = {"images": str(cand.relative_to(folder)), "annotations": str(j.relative_to(folder))}
                break
    if not splits:
        raise DataFormatError(
            f"{folder}: COCO annotations {', '.join(j.name for j in jsons)} found, but no image "
            "folder named after a split (<split>/, images/<split>/ or images/)"
        )
    first = folder / next(iter(splits.values()))["annotations"]
    cats = coco_categories(read_json(first, "COCO JSON"), first)  # the same checks CocoDataset makes
    ids = sorted(cats)
    return DatasetCard(
        folder.name, "detection", "coco", folder, splits, [cats[i] for i in ids], ids, (), source=str(folder)
    )

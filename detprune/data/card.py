"""A dataset card: what a dataset is (task, format, classes, splits, root), parsed from YAML by
:mod:`detprune.data.cards` or detected from a folder by :mod:`detprune.data.layouts`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detprune.errors import DataFormatError, DetpruneError


@dataclass
class DatasetCard:
    """A parsed card. ``category_ids[i]`` is the id in the files of class ``i`` (None: from data)."""

    name: str
    task: str
    format: str
    root: Path
    splits: dict[str, Any]
    classes: list[str]
    category_ids: list[int] | None = None
    ignore: tuple[int, ...] = ()
    img_size: int | None = None
    source: str = ""
    generate: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def has_split(self, split: str) -> bool:
        """Whether :meth:`resolve_split` finds ``split``."""
        try:
            self.resolve_split(split)
        except DetpruneError:
            return False
        return True

    def resolve_split(self, split: str | None) -> str:
        """The split key for ``split``: exact, else a unique key ending in ``-split``/``_split``.

        ``None`` means the only split, else ``val``.
        """
        keys = list(self.splits)
        if split is None:
            if len(keys) == 1:
                return keys[0]
            split = "val"
        if split in self.splits:
            return split
        close = [k for k in keys if k.endswith((f"-{split}", f"_{split}"))]
        if len(close) == 1:
            return close[0]
        raise DataFormatError(f"{self.source}: field 'splits': no split {split!r}; this dataset has: {', '.join(keys)}")

    def split_paths(self, split: str | None) -> tuple[str, Path, Path | None]:
        """``(key, images_or_split_folder, annotations or None)`` for a split, resolved to paths."""
        key = self.resolve_split(split)
        spec = self.splits[key]
        if isinstance(spec, dict):
            images = self.root / str(spec.get("images", "."))
            ann = spec.get("annotations")
            return key, images, (self.root / str(ann)) if ann is not None else None
        return key, self.root / str(spec), None

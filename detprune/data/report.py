"""What loading a dataset kept, dropped and skipped: nothing leaves the data unreported.

Every loader fills one :class:`DataReport`. Zero-size boxes (the official VisDrone train split has
three with height 0) are dropped and listed; under ``lenient=True`` malformed lines are skipped and
listed instead of raising. ``summary()`` is what ``detprune data check`` and ``detprune eval`` print.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("detprune.data")


@dataclass
class DataReport:
    """Counts for one split (or one annotation folder)."""

    images: int = 0
    files: int = 0
    lines: int = 0
    boxes: int = 0  # training/evaluation targets kept
    ignored_regions: int = 0  # VisDrone category 0 / COCO iscrowd
    categories: Counter = field(default_factory=Counter)  # category id -> boxes read (all kinds)
    dropped_zero_size: list[str] = field(default_factory=list)  # "file:line" of dropped boxes
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" (lenient mode)
    skipped_images: list[str] = field(default_factory=list)  # "image: reason" (lenient mode)
    not_targets: Counter = field(default_factory=Counter)  # category id -> boxes that are no target

    def merge(self, other: DataReport) -> None:
        self.images += other.images
        self.files += other.files
        self.lines += other.lines
        self.boxes += other.boxes
        self.ignored_regions += other.ignored_regions
        self.categories.update(other.categories)
        self.dropped_zero_size += other.dropped_zero_size
        self.skipped += other.skipped
        self.skipped_images += other.skipped_images
        self.not_targets.update(other.not_targets)

    @property
    def has_losses(self) -> bool:
        return bool(self.dropped_zero_size or self.skipped or self.skipped_images)

    def summary(self, show: int = 5) -> str:
        """A few human lines; the first ``show`` dropped/skipped places are named."""
        if not self.files:  # an image-folder (classification) split
            per = ", ".join(f"{k}: {v}" for k, v in sorted(self.categories.items()))
            return f"{self.images} images" + (f" (per class: {per})" if per else "")
        lines = [
            f"{self.images} images, {self.files} annotation files, {self.lines} lines, "
            f"{self.boxes} target boxes, {self.ignored_regions} ignored regions"
        ]
        if self.not_targets:
            lines.append(
                "not targets (category: boxes): " + ", ".join(f"{k}: {v}" for k, v in sorted(self.not_targets.items()))
            )
        for title, items in (
            ("dropped zero-size boxes", self.dropped_zero_size),
            ("skipped malformed lines", self.skipped),
            ("skipped images", self.skipped_images),
        ):
            if items:
                more = f" (+{len(items) - show} more)" if len(items) > show else ""
                lines.append(f"{title}: {len(items)}: " + "; ".join(items[:show]) + more)
        return "\n".join(lines)

    def warn_losses(self, what: str) -> None:
        """Log a warning when anything was dropped or skipped, so it is never silent."""
        if self.has_losses:
            log.warning("%s: %s", what, self.summary().replace("\n", " | "))

"""Strict parser for VisDrone2019-DET annotation files (one ``.txt`` per image).

Format (VisDrone toolkit ``readme``; ../shared/research/algorithms.md §8), one object per line::

    bbox_left,bbox_top,bbox_width,bbox_height,score,object_category,truncation,occlusion

Category 0 = ignored region, 1..10 = pedestrian .. motor, 11 = others; in ground truth score 1 =
evaluated, 0 = ignored; truncation 0/1; occlusion 0/1/2. Two real quirks of the official train split
are accepted: a trailing comma on every line of one file, and boxes of height 0 (dropped and
counted). Anything else that is off raises :class:`DataFormatError` naming ``file:line`` and the
field, or with ``lenient=True`` is skipped and listed in the :class:`DataReport`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from detprune.data.checks import INT64_MAX, int64_from_text
from detprune.data.report import DataReport
from detprune.errors import DataFormatError

FIELDS = ("left", "top", "width", "height", "score", "category", "truncation", "occlusion")
VISDRONE_CLASSES = (
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
)  # categories 1..10
NUM_CATEGORIES = 12  # 0 ignored region, 1..10 objects, 11 others
_INT = re.compile(r"[+-]?[0-9]+\Z")
_ALLOWED = {"score": (0, 1), "category": (0, NUM_CATEGORIES - 1), "truncation": (0, 1), "occlusion": (0, 2)}


class _LineError(Exception):
    """Internal: one bad line; carries the message without the file:line prefix."""


def _parse_line(line: str, image_size: tuple[int, int] | None) -> list[int]:
    parts = line.split(",")
    if len(parts) == len(FIELDS) + 1 and parts[-1].strip() == "":
        parts = parts[:-1]  # trailing comma (official train file 9999974_00000_d_0000053.txt)
    if len(parts) != len(FIELDS):
        raise _LineError(f"expected {len(FIELDS)} comma-separated fields ({','.join(FIELDS)}), got {len(parts)}")
    values = []
    for name, raw in zip(FIELDS, parts):
        text = raw.strip()
        if not _INT.match(text):
            raise _LineError(f"field '{name}': {text[:40]!r} is not an integer")
        try:
            values.append(int64_from_text(text))  # before any range check: 2**63 is "too large", not "outside"
        except ValueError as exc:
            raise _LineError(f"field '{name}': {exc}") from None
    left, top, width, height = values[:4]
    for name in ("width", "height"):
        v = values[FIELDS.index(name)]
        if v < 0:
            raise _LineError(f"field '{name}': {v} is negative")
    for name in ("left", "top"):
        v = values[FIELDS.index(name)]
        if v < 0:
            raise _LineError(f"field '{name}': {v} is outside the image (negative)")
    for name, (lo, hi) in _ALLOWED.items():
        v = values[FIELDS.index(name)]
        if not lo <= v <= hi:
            raise _LineError(f"field '{name}': {v} is outside {lo}..{hi}")
    for name, edge, start, size in (("width", "right", left, width), ("height", "bottom", top, height)):
        if start + size > INT64_MAX:  # checked even without an image size: the int64 rows must not wrap
            raise _LineError(
                f"field '{name}': box {edge} edge {start}+{size}={start + size} is too large for a 64-bit integer"
            )
    if image_size is not None:
        h, w = image_size
        if left + width > w:
            raise _LineError(
                f"field 'width': box right edge {left}+{width}={left + width} is outside the image width {w}"
            )
        if top + height > h:
            raise _LineError(
                f"field 'height': box bottom edge {top}+{height}={top + height} is outside the image height {h}"
            )
    return values


def parse_annotation_text(
    text: str,
    name: str,
    image_size: tuple[int, int] | None = None,
    lenient: bool = False,
    report: DataReport | None = None,
) -> np.ndarray:
    """Parse one file's text into an ``int64 [N, 8]`` array (zero-size boxes removed).

    ``name`` is how the file is named in messages (e.g. ``annotations/0000001_02999_d_0000005.txt``);
    ``image_size`` ``(h, w)``, when known, enables the inside-the-image check.
    """
    report = report if report is not None else DataReport()
    report.files += 1
    rows: list[list[int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # a blank line carries no object
        report.lines += 1
        try:
            values = _parse_line(line, image_size)
        except _LineError as exc:
            msg = f"{name}:{lineno}: {exc}"
            if not lenient:
                raise DataFormatError(msg) from None
            report.skipped.append(msg)
            continue
        report.categories[values[5]] += 1
        if values[2] == 0 or values[3] == 0:
            report.dropped_zero_size.append(f"{name}:{lineno}")
            continue
        rows.append(values)
    if not rows:
        return np.zeros((0, len(FIELDS)), dtype=np.int64)
    return np.asarray(rows, dtype=np.int64)


def read_annotation_file(
    path: str | Path,
    name: str | None = None,
    image_size: tuple[int, int] | None = None,
    lenient: bool = False,
    report: DataReport | None = None,
) -> np.ndarray:
    """Read and parse one annotation file; unreadable or non-UTF-8 files raise DataFormatError."""
    path = Path(path)
    name = name or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{name}: cannot read annotation file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        msg = f"{name}:{line}: not UTF-8 text (byte {exc.start})"
        if not lenient:
            raise DataFormatError(msg) from None
        (report if report is not None else DataReport()).skipped.append(msg)
        text = data.decode("utf-8", errors="replace")
    return parse_annotation_text(text, name, image_size=image_size, lenient=lenient, report=report)

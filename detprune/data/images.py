"""Finding, sizing and reading image files, with errors that name the file.

Extensions match case-insensitively (real drone sets mix ``.jpg`` and ``.JPG``). Sizes come from
the file header (PIL, no decode) so a dataset can be indexed and validated quickly; pixels are read
with OpenCV and always returned as 3-channel RGB (HIT-UAV's thermal JPEGs are single-channel).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from detprune.errors import DataFormatError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem; two files with one stem is an error."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image(p):
            if p.stem in found:
                raise DataFormatError(f"{folder}: two images share the name '{p.stem}': {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the header; a missing or unreadable file raises DataFormatError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(f"{path}: cannot read image: {exc}") from None
    return h, w


def read_image(path: Path) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``; grayscale and 16-bit files are converted."""
    # EXIF orientation is ignored on purpose: boxes and header sizes refer to the stored pixel grid
    data = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if data is None:
        if not Path(path).is_file():
            raise DataFormatError(f"{path}: image file not found")
        raise DataFormatError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)

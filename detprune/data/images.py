"""Finding, sizing and reading image files, with errors that name the file.

Extensions match case-insensitively (real drone sets mix ``.jpg`` and ``.JPG``). Sizes come from
the file header (PIL, no decode) so a dataset can be indexed and validated quickly; pixels are read
with OpenCV and always returned as 3-channel RGB (HIT-UAV's thermal JPEGs are single-channel).
OpenCV decodes a truncated JPEG with only a libjpeg warning on stderr (the missing part gray), so
both the header read and the decode check that the file ends as its format says it must.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from detprune.errors import DataFormatError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_TAIL = 4096  # bytes read from the end of a file for the end-marker check
_PADDING = b"\x00 \t\r\n"  # some writers pad files after the end marker


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


def truncation(head: bytes, tail: bytes, size: int) -> str | None:
    """Why a file looks cut short, or None: JPEG must end with EOI (FF D9), PNG with its IEND chunk,
    and BMP/WebP must be as long as their header says (``head``: first 16 bytes, ``tail``: last 4 KiB)."""
    tail = tail.rstrip(_PADDING)
    if head.startswith(b"\xff\xd8\xff"):
        return None if tail.endswith(b"\xff\xd9") else "JPEG data does not end with the end-of-image marker FF D9"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if tail.endswith(b"IEND\xaeB`\x82") else "PNG data does not end with the IEND chunk"
    if head.startswith(b"BM"):
        declared = int.from_bytes(head[2:6], "little")
    elif head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
    else:
        return None  # TIFF and others: left to the decoder
    return f"the header says {declared} bytes, the file has {size}" if size < declared else None


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the header; a missing, unreadable or truncated file raises DataFormatError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f, Image.open(f) as im:
            w, h = im.size
            size = f.seek(0, 2)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
            f.seek(0)
            problem = truncation(f.read(16), tail, size)
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(f"{path}: cannot read image: {exc}") from None
    if problem:
        raise DataFormatError(f"{path}: image is truncated or corrupt ({problem})")
    return h, w


def read_image(path: Path) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]``; grayscale and 16-bit files are converted."""
    try:
        data = Path(path).read_bytes()  # read once: checked for truncation, then decoded from memory
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image file not found") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read image: {exc.strerror or exc}") from None
    problem = truncation(data[:16], data[-_TAIL:], len(data)) if data else "the file is empty"
    if problem:
        raise DataFormatError(f"{path}: image is truncated or corrupt ({problem})")
    # EXIF orientation is ignored on purpose: boxes and header sizes refer to the stored pixel grid
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        image = None
    if image is None:
        raise DataFormatError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

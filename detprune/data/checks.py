"""Field checks the dataset parsers share: integers that fit int64, JSON ids, JSON files.

Python's ``int`` takes any length of digits (and refuses more than 4300 with a ValueError that
names no file), and ``bool`` is an ``int``, so JSON ``true`` would pass as id 1. The field helpers
raise ``ValueError`` with the tail of the message (``field 'id': ...``) for the caller to prefix with
file and entry; the file-level ones (``read_json``, ``coco_categories``) raise DataFormatError.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from detprune.errors import DataFormatError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT64_DIGITS = 19  # digits of INT64_MAX; a longer integer never fits
_TOO_MANY_DIGITS = 10**_INT64_DIGITS


def int64_problem(value: int) -> str | None:
    """Why an integer does not fit int64 (numpy arrays, pycocotools), or None."""
    if abs(value) >= _TOO_MANY_DIGITS:
        return f"integer has {len(str(abs(value)))} digits (too large)"
    if value > INT64_MAX:
        return f"{value} is too large for a 64-bit integer"
    if value < INT64_MIN:
        return f"{value} is too small for a 64-bit integer"
    return None


def int64_from_text(text: str) -> int:
    """An ASCII integer literal (``[+-]?[0-9]+``) as an int; the length is checked before ``int()``."""
    if len(text) <= 18:  # the common case: always fits int64
        return int(text)
    digits = text.lstrip("+-").lstrip("0") or "0"  # leading zeros count towards int()'s digit limit
    if len(digits) > _INT64_DIGITS:
        raise ValueError(f"integer has {len(digits)} digits (too large)")
    value = int(("-" if text.startswith("-") else "") + digits)
    problem = int64_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def show_json(value: Any) -> str:
    """A value as it reads in the JSON file (``true``, ``"7"``, ``null``), cut to 40 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def json_int(obj: dict[str, Any], key: str) -> int:
    """``obj[key]`` as an int64; missing, ``true``/``false``, floats and strings are refused."""
    if key not in obj:
        raise ValueError(f"field '{key}': missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"field '{key}': {show_json(value)} is not an integer")
    problem = int64_problem(value)
    if problem:
        raise ValueError(f"field '{key}': {problem}")
    return value


def json_str(obj: dict[str, Any], key: str) -> str:
    """``obj[key]`` as a string; missing or another type is refused."""
    if key not in obj:
        raise ValueError(f"field '{key}': missing")
    if not isinstance(obj[key], str):
        raise ValueError(f"field '{key}': {show_json(obj[key])} is not a string")
    return obj[key]


def finite_number(value: Any) -> bool:
    """A JSON number usable as a float: not ``true``/``false``, not infinite, not too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of hundreds of digits
        return False


def coco_categories(data: Any, ann: Path) -> dict[int, str]:
    """COCO ``categories`` as id -> name; a missing, boolean or repeated id, or a missing name, is an error."""
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list):
        raise DataFormatError(f"{ann}: field 'categories' is missing or not a list")
    out: dict[int, str] = {}
    first: dict[int, int] = {}  # id -> index of the entry that has it
    for i, c in enumerate(cats):
        where = f"{ann}: categories[{i}]"
        if not isinstance(c, dict):
            raise DataFormatError(f"{where}: not an object")
        try:
            cid, name = json_int(c, "id"), json_str(c, "name")
        except ValueError as exc:
            raise DataFormatError(f"{where}: {exc}") from None
        if cid in first:
            raise DataFormatError(f"{where}: field 'id': {cid} is also the id of categories[{first[cid]}]")
        first[cid], out[cid] = i, name
    return out


def long_integer(path: Path | str, text: str) -> str | None:
    """``path:line: field 'key': integer has N digits (too large)`` for the first integer literal in
    JSON/YAML text longer than Python converts (the loaders' own error names no place), or None."""
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if not limit:
        return None
    m = re.search(rf"(?:[\"']?([A-Za-z_][\w-]*)[\"']?\s*:\s*)?[+-]?([0-9]{{{limit + 1},}})", text)
    if m is None:
        return None
    line = text.count("\n", 0, m.start(2)) + 1
    field = f" field '{m.group(1)}':" if m.group(1) else ""
    return f"{path}:{line}:{field} integer has {len(m.group(2).lstrip('0'))} digits (too large)"


def read_json(path: Path, what: str) -> Any:
    """Load a JSON file; unreadable, invalid or over-long numbers raise one-line DataFormatError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer beyond Python's digit limit
        raise DataFormatError(long_integer(path, text) or f"{path}: not valid JSON: {exc}") from None

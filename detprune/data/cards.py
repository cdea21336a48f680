"""Dataset cards: one small YAML file says where a dataset lives and how to read it.

A card (``datasets/*.yaml``) has ``name``, ``task`` (detection | classification), ``format``
(visdrone | coco | imagefolder), ``root`` (relative to the card's folder; ``~`` and
``${VAR:-default}`` expand), ``splits`` (split -> folder, or ``{images, annotations}``),
``classes`` (a list, or a mapping ``{category id: name}``), ``ignore`` (category ids that are no
target) and optionally ``img_size`` and ``generate`` (synthetic data made on first use). Keys a
card does not know stay in ``card.extra`` (the detector adapters keep ``anchors`` there).
:func:`load_card` also accepts a dataset folder and detects its layout (see ``layouts.py``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from detprune.data.card import DatasetCard
from detprune.data.checks import int64_problem, long_integer
from detprune.data.layouts import detect_layout
from detprune.data.synthetic import ensure_generated
from detprune.errors import DataFormatError

TASKS = ("detection", "classification")
FORMATS = {"visdrone": "detection", "coco": "detection", "imagefolder": "classification"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _is_id(v: Any) -> bool:
    """A category id: an int64, and not YAML ``true``/``false`` (a bool is an int in Python)."""
    return isinstance(v, int) and not isinstance(v, bool) and int64_problem(v) is None


def expand(text: str) -> str:
    """``~`` and ``${VAR}`` / ``${VAR:-default}`` expansion."""

    def sub(m: re.Match) -> str:
        val = os.environ.get(m.group(1))
        return val if val else (m.group(2) or "")

    return os.path.expanduser(_ENV.sub(sub, text))


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key, for error messages."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def parse_card(data: Any, source: str, lines: dict[str, int] | None = None, base: Path | None = None) -> DatasetCard:
    """Validate a card mapping; errors name ``source:line`` and the field."""
    lines = lines or {}

    def fail(key: str, msg: str) -> DataFormatError:
        where = f"{source}:{lines[key]}" if key in lines else source
        return DataFormatError(f"{where}: field '{key}': {msg}")

    if not isinstance(data, dict):
        raise DataFormatError(f"{source}: a dataset card must be a YAML mapping, got {type(data).__name__}")
    for key in ("name", "format", "root", "splits", "classes"):
        if key not in data:
            raise DataFormatError(f"{source}: field '{key}' is missing")
    fmt = data["format"]
    if fmt not in FORMATS:
        raise fail("format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    task = data.get("task", FORMATS[fmt])
    if task != FORMATS[fmt]:
        raise fail("task", f"{task!r} does not match format {fmt!r} (expected {FORMATS[fmt]!r})")
    splits = data["splits"]
    if not isinstance(splits, dict) or not splits:
        raise fail("splits", "must map split names to folders, e.g. {train: train, val: val}")
    for k, v in splits.items():
        if not isinstance(v, (str, dict)) or (isinstance(v, dict) and not set(v) <= {"images", "annotations"}):
            raise fail("splits", f"split {k!r}: expected a folder or {{images: ..., annotations: ...}}, got {v!r}")
    classes, ids = _parse_classes(data["classes"], fmt, lambda m: fail("classes", m))
    ignore = data.get("ignore", [])
    if not isinstance(ignore, list) or not all(_is_id(i) for i in ignore):
        raise fail("ignore", f"must be a list of category ids, got {ignore!r}")
    if ids is not None and set(ids) & set(ignore):
        raise fail("ignore", f"ids {sorted(set(ids) & set(ignore))} are also classes")
    img_size = data.get("img_size")
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0):
        raise fail("img_size", f"must be a positive integer, got {img_size!r}")
    gen = data.get("generate")
    if gen is not None and not isinstance(gen, dict):
        raise fail("generate", f"must be a mapping, got {gen!r}")
    root = Path(expand(str(data["root"])))
    if not root.is_absolute() and base is not None:
        root = base / root
    known = {"name", "task", "format", "root", "splits", "classes", "ignore", "img_size", "generate"}
    return DatasetCard(
        name=str(data["name"]),
        task=task,
        format=fmt,
        root=root,
        splits={str(k): v for k, v in splits.items()},
        classes=classes,
        category_ids=ids,
        ignore=tuple(ignore),
        img_size=img_size,
        source=source,
        generate=gen,
        extra={k: v for k, v in data.items() if k not in known},
    )


def _parse_classes(value: Any, fmt: str, fail) -> tuple[list[str], list[int] | None]:
    if isinstance(value, dict):
        if not value or not all(_is_id(k) for k in value):
            raise fail(f"a mapping must have integer category ids as keys, got {list(value)[:5]!r}")
        ids = sorted(value)
        return [str(value[i]) for i in ids], ids
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise fail(f"must be a non-empty list of class names or a mapping id -> name, got {value!r}")
    if len(set(value)) != len(value):
        raise fail("class names repeat")
    if fmt == "visdrone":
        return list(value), list(range(1, len(value) + 1))  # category k is class k-1
    return list(value), None  # coco: ids from the JSON by name; imagefolder: folder names


def load_card(path: str | Path, root: str | Path | None = None) -> DatasetCard:
    """A card from a ``.yaml`` file, or from a dataset folder whose layout is detected.

    ``root`` overrides the card's ``root``. A card with ``generate`` makes its data on first use.
    """
    p = Path(expand(str(path)))
    if p.is_dir():
        card = detect_layout(p)
    elif p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
            data = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{p}: cannot read dataset card: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            raise DataFormatError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        except ValueError as exc:  # a value YAML parses but Python cannot build (a 5000-digit integer)
            raise DataFormatError(long_integer(p, text) or f"{p}: not valid YAML: {exc}") from None
        card = parse_card(data, str(p), _key_lines(text), base=p.resolve().parent)
    else:
        raise DataFormatError(f"{p}: no such dataset card or folder")
    if root is not None:
        card.root = Path(expand(str(root)))
    if card.generate is not None:
        ensure_generated(card)
    return card

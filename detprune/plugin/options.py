"""One ``KEY=VALUE`` grammar for every option given as text: ``--pruner-opt``, ``--compensator-opt``,
``--model-arg`` and ``detprune bench ... --set``.

* ``KEY`` is a Python identifier; dashes become underscores (``layer-finetune-steps`` =
  ``layer_finetune_steps``). ``bench --set`` prefixes it with a target: ``sketch.epochs``.
* ``VALUE`` is JSON when it parses as JSON (``3``, ``1e-4``, ``true``, ``null``, ``"text"``,
  ``[0.3, 0.5]``, ``{"width": 0.25}``), else the text itself (``mode=layerwise``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from detprune.errors import DetpruneError

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_value(text: str) -> Any:
    """JSON when ``text`` is JSON, else ``text`` (stripped)."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_assignment(item: str, flag: str, dotted: bool = False, example: str | None = None) -> tuple[str, Any]:
    """``"KEY=VALUE"`` (``"TARGET.KEY=VALUE"`` when ``dotted``) -> ``(key, value)``; a bad item names ``flag``."""
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    parts = key.split(".", 1) if dotted else [key]
    form = "TARGET.KEY=VALUE" if dotted else "KEY=VALUE"
    example = f"{form}, e.g. {example or ('sketch.epochs=2' if dotted else 'images=64')}"
    if not sep or len(parts) != (2 if dotted else 1) or not all(_KEY.match(p) for p in parts):
        raise DetpruneError(f"{flag} expects {example}, got {item!r}")
    return key, parse_value(value)


def parse_options(items: list[str], flag: str) -> dict[str, Any]:
    """Several ``KEY=VALUE`` items as a dict (a later item wins)."""
    return dict(parse_assignment(item, flag) for item in items)

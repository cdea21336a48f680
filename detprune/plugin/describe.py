"""What a plugin takes: its options, read from its factory's signature and ``:param name:`` lines,
with the ``detprune prune`` flag that sets each (``detprune plugins NAME`` prints this)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: options that ``detprune prune`` sets through a flag of its own, per plugin kind
FLAGS = {
    "pruner": {
        "s": "--sparsity",
        "shortcut": "--shortcut",
        "shortcut_width": "--shortcut-width",
        "criterion": "--criterion",
        "min_keep": "--min-keep",
    },
    "compensator": {"alpha": "--alpha"},
    "adapter": {
        "width": "--width",
        "depth": "--depth",
        "img_size": "--img-size",
        "num_classes": "(the dataset's classes)",
    },
}
#: the generic flag for every other option, per kind
GENERIC = {
    "pruner": "--pruner-opt",
    "compensator": "--compensator-opt",
    "adapter": "--model-arg",
    "criterion": "--pruner-opt criterion_options='{...}' (oneshot)",
}
_PARAM = re.compile(r"^\s*:param (\w+):\s*(.*)$")


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    doc: str
    flag: str

    def describe(self) -> str:
        default = "required" if self.default is inspect.Parameter.empty else f"default {self.default!r}"
        return f"{self.name} ({default}; {self.flag}){': ' + self.doc if self.doc else ''}"


def param_docs(*docstrings: str | None) -> dict[str, str]:
    """``{name: text}`` from ``:param name: text`` lines (continuation lines joined)."""
    out: dict[str, str] = {}
    for doc in docstrings:
        current = None
        for line in inspect.cleandoc(doc or "").splitlines():
            m = _PARAM.match(line)
            if m:
                current = m.group(1)
                out[current] = m.group(2).strip()
            elif current and line.strip() and not line.lstrip().startswith(":"):
                out[current] += " " + line.strip()
            else:
                current = None
    return out


def options(kind: str, factory: Callable[..., Any]) -> list[Option]:
    """The keyword options ``factory`` takes, each with its default, its documentation and its flag."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    classes = factory.__mro__ if isinstance(factory, type) else (factory,)
    docs = param_docs(*[getattr(vars(c).get("__init__"), "__doc__", None) for c in reversed(classes)], factory.__doc__)
    flags = FLAGS.get(kind, {})
    generic = GENERIC.get(kind, "")
    return [
        Option(n, p.default, docs.get(n, ""), flags.get(n) or (f"{generic} {n}=..." if kind in FLAGS else generic))
        for n, p in params.items()
        if n != "self" and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]

"""detprune: structured pruning of convolutional detectors and classifiers.

Public API (imported lazily, so ``import detprune`` stays cheap)::

    detprune.prune(model, example_inputs, ratio=0.3, criterion="l1") -> PruneResult
    detprune.save(result, path) / detprune.load(path)
    detprune.evaluate(...)          # mAP@0.5 / top-1
    detprune.plugins()              # the plugin host
    detprune.hookimpl               # decorator for plugin hook implementations
    detprune.Criterion / Pruner / Compensator / ModelAdapter   # base classes a plugin extends
                                    # (docs/plugin-guide.md is the author's guide)
"""

from __future__ import annotations

import importlib
from typing import Any

from detprune.plugin.hookspecs import hookimpl

__version__ = "0.1.0"

_LAZY = {
    "prune": "detprune.api",
    "PruneResult": "detprune.api",
    "save": "detprune.recipe",
    "load": "detprune.recipe",
    "evaluate": "detprune.eval.evaluate",
    "plugins": "detprune.plugin.host",
    "PruningPlan": "detprune.graph.plan",
    "PruneContext": "detprune.plugin.context",
    "Criterion": "detprune.plugin.protocols",
    "Pruner": "detprune.plugin.protocols",
    "Compensator": "detprune.plugin.protocols",
    "ModelAdapter": "detprune.plugin.protocols",
}

__all__ = ["hookimpl", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'detprune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

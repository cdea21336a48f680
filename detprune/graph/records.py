"""What a capture records: per-module channel axes, per-channel parameters, constraints, and the
whole :class:`Capture` that ``build_graph`` turns into groups. Data only, so the op handlers
(``ops/``) and the recorder (``capture.py``) can both use it without importing each other."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class ModRecord:
    """What one module's channel axes carry. ``out``/``inp``/``through`` hold one raw id per position.

    ``kind``: ``conv`` (incl. transposed and grouped), ``dwconv`` (depthwise: a per-channel
    "through" module), ``linear``, ``norm`` (BN/IN/GN/LN) or ``prelu``. ``params`` names the
    module's tensors and the axis each one is sliced along, per role.
    """

    name: str
    kind: str
    params: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    out: np.ndarray | None = None
    inp: np.ndarray | None = None
    through: np.ndarray | None = None
    groups: int = 1
    transposed: bool = False
    mult: int = 1  # depthwise channel multiplier
    norm_groups: int | None = None  # GroupNorm's num_groups
    order: int = 0


@dataclass
class ParamSlot:
    """A parameter or buffer used per channel by a pointwise op (e.g. a layer-scale ``gamma``)."""

    module: str
    param: str
    axis: int
    ids: np.ndarray
    order: int = 0


@dataclass
class Constraint:
    """Blocks of positions (raw ids, with multiplicity) that must keep equal counts."""

    blocks: list[np.ndarray]
    where: str


@dataclass
class Capture:
    n_ids: int
    sources: list[tuple[int, int, str]]  # [start, stop) minted by one source
    edges: list[tuple[np.ndarray, np.ndarray]]
    fixed: list[tuple[np.ndarray, str]]
    constraints: list[Constraint]
    records: dict[str, ModRecord]
    param_slots: dict[tuple[str, str, int], ParamSlot]
    output_spec: Any  # pytree spec of the outputs
    output_shapes: list[tuple[int, ...] | None]


def flat_tensors(args: Iterable[Any], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors among an op's arguments, including those inside lists/tuples (``torch.cat``)."""
    found = []
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(x for x in a if isinstance(x, torch.Tensor))
    return found

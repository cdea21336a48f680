"""The plan the engine applies: for each prunable channel group, the channels that stay.

Pruners return it, surgery applies it, recipes store it (``to_dict``/``from_dict``, JSON only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class PruningPlan:
    """What survives: for each prunable channel group, the sorted indices of the kept channels.

    Indices are group-local channel numbers (0 .. group.size-1). A group absent from ``kept``
    keeps all its channels, so ``PruningPlan({})`` is the plan that removes nothing.

    ``widths`` is optional and only for residual groups whose producers may end at different
    widths before a compensator reconciles them (Network Slimming ``--shortcut sketch``):
    ``{group_id: {producer_module_name: kept_count}}``.
    ``meta`` records how the plan was made (pruner, criterion, asked ratio) for reports.
    """

    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    widths: dict[int, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        normalised: dict[int, torch.Tensor] = {}
        for gid, idx in self.kept.items():
            t = torch.as_tensor(idx, dtype=torch.long).flatten()
            if t.numel() == 0:
                raise ValueError(f"plan keeps no channel of group {gid}: every group keeps at least one")
            t = torch.unique(t)  # sorted, unique
            normalised[int(gid)] = t
        self.kept = normalised

    def kept_count(self, group_id: int, size: int) -> int:
        """Number of channels group ``group_id`` (of ``size`` channels) keeps under this plan."""
        return int(self.kept[group_id].numel()) if group_id in self.kept else size

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, as stored in a recipe."""
        return {
            "kept": {str(g): t.tolist() for g, t in sorted(self.kept.items())},
            "widths": {str(g): dict(w) for g, w in sorted(self.widths.items())},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Inverse of :meth:`to_dict`."""
        kept = {int(g): torch.tensor(v, dtype=torch.long) for g, v in data.get("kept", {}).items()}
        widths = {int(g): {str(k): int(n) for k, n in w.items()} for g, w in data.get("widths", {}).items()}
        return cls(kept=kept, widths=widths, meta=dict(data.get("meta", {})))

"""ChannelGraph: coupled channel groups, the slots they occupy in modules, and their constraints.

A *class* is a set of channel ids joined by unions: physical channel slots that live or die
together. A *group* is the set of classes connected through a shared source (one producer's
filters, e.g. every producer of a ResNet stage's residual stream) or a shared count constraint
(chunk pieces, grouped-conv blocks). A group's channels are its classes, numbered 0..size-1 in
order of first appearance; plans keep or drop those channel numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from detprune.errors import GraphError
from detprune.graph.planner import make_plan, structure, validate
from detprune.graph.records import Capture, ModRecord, ParamSlot
from detprune.graph.rows import slot_rows
from detprune.graph.surgery import apply
from detprune.graph.unionfind import components


@dataclass(frozen=True, eq=False)
class Slot:
    """A module's channel axis positions that carry group channels.

    ``role``: ``"out"`` (a producer's output channels), ``"in"`` (a consumer's input channels) or
    ``"through"`` (a per-channel module: BN/GN affine, a depthwise conv, a layer-scale parameter
    named by ``param``). ``index[k]`` is a position on that axis, ``channel[k]`` the group channel
    it carries.
    """

    module: str
    role: str
    index: torch.Tensor
    channel: torch.Tensor
    param: str | None = None
    kind: str = ""

    def __repr__(self) -> str:
        extra = f", param={self.param!r}" if self.param else ""
        return f"Slot({self.module!r}, {self.role!r}, n={len(self.index)}{extra})"


@dataclass(eq=False)
class ChannelGroup:
    """Channels that must be pruned together, with everything a planner must respect.

    ``fixed[c]`` is True for channels that can never go (reasons in ``fixed_reasons``);
    ``blocks`` lists count constraints as ``(description, [channels of block 0, block 1, ...])``:
    every block of one constraint must keep the same number of positions.
    """

    id: int
    size: int
    slots: list[Slot]
    fixed: torch.Tensor
    fixed_reasons: list[str]
    blocks: list[tuple[str, list[torch.Tensor]]] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def prunable(self) -> bool:
        return not self.reason

    @property
    def reason(self) -> str:
        """Why the group cannot lose a channel ("" when it can)."""
        if self.size <= 1:
            return "a single channel"
        if self.fixed.all():
            return self.fixed_reasons[0] if self.fixed_reasons else "every channel is fixed"
        if not any(s.role == "out" for s in self.slots):
            return "no producer whose filters could be removed"
        if not structure(self).can_remove:
            what = "; ".join(w for w, _ in self.blocks[:2])
            return f"its count constraints leave no channel that can go alone or in equal rounds ({what})"
        return ""

    @property
    def producers(self) -> list[Slot]:
        return [s for s in self.slots if s.role == "out"]

    @property
    def consumers(self) -> list[Slot]:
        return [s for s in self.slots if s.role == "in"]

    @property
    def throughs(self) -> list[Slot]:
        return [s for s in self.slots if s.role == "through"]

    def modules(self, role: str | None = None) -> list[str]:
        return list(dict.fromkeys(s.module for s in self.slots if role is None or s.role == role))

    def rows(self, model: nn.Module, slot: Slot) -> torch.Tensor | None:
        """The slot's weight, one row per position (a detached copy), or None without a weight."""
        return slot_rows(model, slot, self.records.get(slot.module))

    def reduce(
        self,
        model: nn.Module,
        fn: Callable[[torch.Tensor], torch.Tensor],
        role: str = "out",
        types: type | tuple[type, ...] | None = None,
    ) -> torch.Tensor:
        """Scatter-add ``fn(rows)`` of every ``role`` slot onto group channels -> ``[size]``."""
        total = torch.zeros(self.size, dtype=torch.float32)
        for slot in self.slots:
            if slot.role != role:
                continue
            if types is not None and not isinstance(model.get_submodule(slot.module), types):
                continue
            rows = self.rows(model, slot)
            if rows is None:
                continue
            vals = fn(rows).detach().reshape(-1).to(device="cpu", dtype=torch.float32)
            if vals.numel() != len(slot.index):
                raise GraphError(
                    f"criterion returned {vals.numel()} values for {len(slot.index)} rows of {slot.module}"
                )
            total.index_add_(0, slot.channel, vals)
        return total

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"fixed: {self.reason}"
        return f"ChannelGroup(id={self.id}, size={self.size}, producers={self.modules('out')}, {state})"


@dataclass(eq=False)
class ChannelGraph:
    """All channel groups of one model at one input shape, plus what surgery needs."""

    groups: list[ChannelGroup]
    records: dict[str, ModRecord]
    param_slots: list[ParamSlot]
    group_of: np.ndarray  # raw id -> group id
    chan_of: np.ndarray  # raw id -> channel within its group
    example_inputs: tuple[Any, ...]
    output_spec: Any
    output_shapes: list[tuple[int, ...] | None]
    protected: tuple[str, ...] = ()
    leaves: tuple[Any, ...] = ()

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]

    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def __iter__(self) -> Iterator[ChannelGroup]:
        return iter(self.groups)

    def fingerprint(self) -> str:
        """A hash of the structure (groups, slots, constraints); changes when the model does."""
        h = hashlib.sha256()
        for g in self.groups:
            h.update(f"g{g.id}:{g.size}:{g.fixed.to(torch.uint8).numpy().tobytes().hex()}".encode())
            for s in g.slots:
                h.update(f"{s.module}|{s.role}|{s.param}|".encode())
                h.update(s.index.numpy().tobytes())
                h.update(s.channel.numpy().tobytes())
            for what, blocks in g.blocks:
                h.update(what.encode())
                for b in blocks:
                    h.update(b.numpy().tobytes())
        return h.hexdigest()[:16]

    def validate(self, plan) -> None:
        """Raise GraphError naming the group when ``plan`` breaks a rule (fixed channels, equal blocks, ...)."""
        validate(self, plan)

    def kept_mask(self, plan) -> np.ndarray:
        """Per raw id: does the channel survive ``plan``?"""
        validate(self, plan)
        offsets = np.cumsum([0] + [g.size for g in self.groups])
        keep = np.ones(offsets[-1], dtype=bool)
        for gid, idx in plan.kept.items():
            m = np.zeros(self.groups[gid].size, dtype=bool)
            m[idx.numpy()] = True
            keep[offsets[gid] : offsets[gid + 1]] = m
        return keep[offsets[self.group_of] + self.chan_of]

    def kept_index(self, plan, module: str, role: str) -> torch.Tensor:
        """Original positions on ``module``'s ``role`` axis that survive ``plan``, in order."""
        keep = self.kept_mask(plan)
        rec = self.records.get(module)
        ids = None
        if rec is not None:
            ids = {"out": rec.out, "in": rec.inp, "through": rec.through}[role]
        if ids is None:
            slots = [p for p in self.param_slots if p.module == module]
            if role != "through" or not slots:
                raise GraphError(f"module '{module}' has no '{role}' channel axis in this graph")
            ids = slots[0].ids
        return torch.from_numpy(np.flatnonzero(keep[ids]))

    def plan(
        self,
        scores: dict[int, torch.Tensor],
        ratio: float,
        round_to: int | None = None,
        global_ranking: bool = False,
        min_keep: float = 0.0,
    ):
        """Top channels per group (or by one global ranking), respecting every constraint."""
        return make_plan(self, scores, ratio, round_to=round_to, global_ranking=global_ranking, min_keep=min_keep)

    def apply(self, model: nn.Module, plan, inplace: bool = False, check: bool = True) -> nn.Module:
        """Physically prune ``model`` by ``plan`` (on a deep copy unless ``inplace``)."""
        return apply(self, model, plan, inplace=inplace, check=check)

    def summary(self) -> str:
        lines = [f"{len(self.groups)} groups, {len(self.prunable_groups())} prunable"]
        for g in self.groups:
            lines.append(f"  {g!r}")
        return "\n".join(lines)


def _components_labels(cap: Capture, extra: Iterable[tuple[np.ndarray, np.ndarray]] = ()) -> np.ndarray:
    return components(cap.n_ids, list(cap.edges) + list(extra))


def build_graph(
    cap: Capture, model: nn.Module, inputs: tuple[Any, ...], protected: Iterable[str] = (), leaves: Iterable[Any] = ()
) -> ChannelGraph:
    """Resolve classes and groups from a capture and attach slots and constraints to each group."""
    protected = tuple(protected)
    fixed = list(cap.fixed)
    names = {n for n, _ in model.named_modules()}
    for p in protected:
        if p not in names:
            raise GraphError(f"protected module '{p}' is not in the model")
        for r in cap.records.values():
            if r.name == p or r.name.startswith(p + "."):
                for ids in (r.out, r.through):
                    if ids is not None:
                        fixed.append((ids, f"protected: {p}"))
        for s in cap.param_slots.values():
            if s.module == p or s.module.startswith(p + "."):
                fixed.append((s.ids, f"protected: {p}"))
    cls = _components_labels(cap)
    link = [
        (np.full(stop - start - 1, start), np.arange(start + 1, stop))
        for start, stop, _ in cap.sources
        if stop - start > 1
    ]
    constraints = _dedupe(cap.constraints)
    for c in constraints:
        allids = np.concatenate(c.blocks)
        link.append((np.full(allids.size, allids[0]), allids))
    grp = _components_labels(cap, link)
    order = np.unique(grp)  # group labels are the smallest raw id, so this is first-seen order
    group_of = np.searchsorted(order, grp)
    key = np.unique(group_of * cap.n_ids + cls)  # sorted by (group, class label)
    pairs = np.stack([key // max(cap.n_ids, 1), key % max(cap.n_ids, 1)])
    starts = np.searchsorted(pairs[0], np.arange(len(order)))
    lookup = np.zeros(cap.n_ids, dtype=np.int64)  # class label -> channel number within its group
    lookup[pairs[1]] = np.arange(pairs.shape[1]) - starts[pairs[0]]
    chan_of = lookup[cls]
    sizes = np.bincount(pairs[0], minlength=len(order))
    fixed_mask = [np.zeros(int(n), dtype=bool) for n in sizes]
    reasons: list[list[str]] = [[] for _ in sizes]
    for ids, why in fixed:
        ids = np.unique(np.asarray(ids).ravel())
        for g in np.unique(group_of[ids]):
            sel = ids[group_of[ids] == g]
            fixed_mask[g][chan_of[sel]] = True
            if why not in reasons[g]:
                reasons[g].append(why)
    slots: list[list[Slot]] = [[] for _ in sizes]
    records = sorted(cap.records.values(), key=lambda r: r.order)
    for r in records:
        for role, ids in (("out", r.out), ("in", r.inp), ("through", r.through)):
            if ids is not None:
                _add_slots(slots, r.name, role, ids, group_of, chan_of, kind=r.kind)
    pslots = sorted(cap.param_slots.values(), key=lambda p: p.order)
    for p in pslots:
        _add_slots(slots, p.module, "through", p.ids, group_of, chan_of, param=p.param, kind="param")
    blocks: list[list[tuple[str, list[torch.Tensor]]]] = [[] for _ in sizes]
    for c in constraints:
        g = int(group_of[c.blocks[0][0]])
        blocks[g].append((c.where, [torch.from_numpy(chan_of[b]) for b in c.blocks]))
    rec_map = dict(cap.records)
    groups = [
        ChannelGroup(
            id=k,
            size=int(sizes[k]),
            slots=slots[k],
            fixed=torch.from_numpy(fixed_mask[k]),
            fixed_reasons=reasons[k],
            blocks=blocks[k],
            records=rec_map,
        )
        for k in range(len(order))
    ]
    return ChannelGraph(
        groups=groups,
        records=rec_map,
        param_slots=pslots,
        group_of=group_of,
        chan_of=chan_of,
        example_inputs=tuple(inputs),
        output_spec=cap.output_spec,
        output_shapes=cap.output_shapes,
        protected=protected,
        leaves=tuple(leaves),
    )


def _add_slots(slots, module: str, role: str, ids: np.ndarray, group_of, chan_of, param=None, kind="") -> None:
    g = group_of[ids]
    if g.min() == g.max():  # the common case: the whole axis carries one group
        slots[g[0]].append(Slot(module, role, torch.arange(len(ids)), torch.from_numpy(chan_of[ids]), param, kind))
        return
    for gid in np.unique(g):
        pos = np.flatnonzero(g == gid)
        slots[gid].append(Slot(module, role, torch.from_numpy(pos), torch.from_numpy(chan_of[ids[pos]]), param, kind))


def _dedupe(constraints):
    seen, out = set(), []
    for c in constraints:
        key = tuple(b.tobytes() for b in c.blocks)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out

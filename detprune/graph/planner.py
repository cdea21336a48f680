"""From channel scores to a PruningPlan that every constraint of the graph allows.

Per group, channels are removed lowest score first. A channel that a count constraint binds to
one block (a chunk piece, a grouped conv's group) can only go in a *round* that removes one such
channel from every block of that constraint, so all blocks keep equal counts; a round is ranked
by the mean score of its members. Channels fixed by the graph never go, no producer is emptied,
and every group keeps at least one channel. ``global_ranking`` ranks all groups' candidates
against one threshold (scores must then be comparable: criteria normalise per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from detprune.errors import GraphError
from detprune.graph.plan import PruningPlan


@dataclass
class _Structure:
    removable: np.ndarray  # channels free to go one by one
    buckets: list[list[np.ndarray]]  # per bucket: per block, channels removable only in rounds
    fixed: np.ndarray  # channels that must stay (graph-fixed or unevenly constrained)
    weights: list[np.ndarray]  # per constraint: [size, blocks] positions of each channel per block
    nested: bool = False  # constraints overlap: solved as a small integer program (see _solve_nested)
    nested_ok: bool = True

    @property
    def can_remove(self) -> bool:
        if self.nested:
            return self.nested_ok
        return bool(self.removable.size) or any(all(len(b) >= 2 for b in bk) for bk in self.buckets)


def structure(group) -> _Structure:
    """Classify a group's channels against its count constraints (cached on the group)."""
    cached = getattr(group, "_structure", None)
    if cached is not None:
        return cached
    n = group.size
    fixed = group.fixed.numpy().copy()
    bound_by = np.full(n, -1)  # the constraint that binds a channel to one of its blocks
    block_of = np.zeros(n, dtype=np.int64)
    weight_of = np.zeros(n, dtype=np.int64)
    weights, nested = [], False
    for s, (_, blocks) in enumerate(group.blocks):
        w = np.zeros((n, len(blocks)), dtype=np.int64)
        for j, b in enumerate(blocks):
            np.add.at(w[:, j], b.numpy(), 1)
        weights.append(w)
        uneven = w.any(axis=1) & ~(w == w[:, :1]).all(axis=1)  # even rows are free w.r.t. this constraint
        single = uneven & ((w > 0).sum(axis=1) == 1)
        if (uneven & ~single).any() or (single & (bound_by != -1)).any():
            nested = True  # spread unevenly over blocks, or bound by two constraints
        take = single & (bound_by == -1)
        bound_by[take] = s
        block_of[take] = w[take].argmax(axis=1)
        weight_of[take] = w[take].max(axis=1)
    if nested and not _have_milp():
        nested = False
        for w in weights:  # without a solver, channels bound by several constraints stay
            fixed |= w.any(axis=1) & ~(w == w[:, :1]).all(axis=1)
    buckets = []
    bound = (bound_by >= 0) & ~fixed
    for s, wt in sorted({(int(a), int(b)) for a, b in zip(bound_by[bound], weight_of[bound])}):
        sel = bound & (bound_by == s) & (weight_of == wt)
        buckets.append([np.flatnonzero(sel & (block_of == j)) for j in range(len(group.blocks[s][1]))])
    removable = np.flatnonzero(~fixed & (bound_by == -1))
    st = _Structure(removable, buckets, fixed, weights, nested)
    group._structure = st
    if nested:  # prove once that at least one channel can go (deep shuffles can forbid it)
        st.nested_ok = bool(_solve_nested(group, np.zeros(n), n).size)
    return st


def _have_milp() -> bool:
    try:
        from scipy.optimize import milp  # noqa: F401
    except ImportError:
        return False
    return True


def _solve_nested(group, score: np.ndarray, n_remove: int) -> np.ndarray:
    """Channels to remove from a group whose count constraints overlap (ShuffleNet's streams).

    A 0/1 integer program (scipy's HiGHS): remove as many channels as possible up to
    ``n_remove``, lowest scores first, such that every constraint's blocks lose equal counts,
    every block keeps one position, and every producer keeps one channel.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    st = structure(group)
    n = group.size
    if n_remove <= 0:
        return np.zeros(0, dtype=np.int64)
    rows, lo, hi = [], [], []
    for w in st.weights:
        for j in range(1, w.shape[1]):
            rows.append(w[:, j] - w[:, 0])
            lo.append(0)
            hi.append(0)  # noqa: E702
        for j in range(w.shape[1]):
            rows.append(w[:, j])
            lo.append(0)
            hi.append(w[:, j].sum() - 1)  # noqa: E702
    for slot in group.slots:
        if slot.role in ("out", "through"):
            chans = np.unique(slot.channel.numpy())
            row = np.zeros(n)
            row[chans] = 1
            rows.append(row)
            lo.append(0)
            hi.append(len(chans) - 1)  # noqa: E702
    rows.append(np.ones(n))
    lo.append(0)
    hi.append(n_remove)  # noqa: E702
    span = float(np.ptp(score)) or 1.0
    cost = (score - score.min()) / span - (n + 1.0)  # count first, then low scores
    res = milp(
        cost,
        integrality=np.ones(n),
        bounds=Bounds(0, np.where(st.fixed, 0, 1)),
        constraints=LinearConstraint(np.array(rows, dtype=float), lo, hi),
        options={"time_limit": 10.0},
    )
    if res.x is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(res.x > 0.5)


def _candidates(group, score: np.ndarray) -> list[tuple[float, int, np.ndarray]]:
    st = structure(group)
    if st.nested:
        return []
    cands = [(float(score[c]), 0, np.array([c])) for c in st.removable]
    for bucket in st.buckets:
        if any(len(b) < 2 for b in bucket):
            continue  # every block keeps at least one of its bound channels
        ordered = [b[np.argsort(score[b], kind="stable")] for b in bucket]
        for r in range(min(len(b) for b in ordered) - 1):
            members = np.array([b[r] for b in ordered])
            cands.append((float(score[members].mean()), r, members))
    return cands


class _Tracker:
    """Removes candidates of one group while keeping every producer/through slot non-empty.

    Slots that carry every channel of the group are covered by "the group keeps one channel";
    only partial slots (a producer that feeds part of a group) are tracked channel by channel.
    """

    def __init__(self, group):
        self.group = group
        self.removed = np.zeros(group.size, dtype=bool)
        self.count = 0
        self.left: list[int] = []
        self.slots_of: dict[int, list[int]] = {}
        for s in group.slots:
            if s.role not in ("out", "through"):
                continue
            chans = np.unique(s.channel.numpy())
            if len(chans) == group.size:
                continue
            k = len(self.left)
            self.left.append(len(chans))
            for c in chans.tolist():
                self.slots_of.setdefault(c, []).append(k)
        self.taken: list[tuple[float, np.ndarray]] = []

    def try_take(self, score: float, members: np.ndarray) -> bool:
        if self.count + len(members) >= self.group.size:
            return False
        if self.slots_of:
            hits: dict[int, int] = {}
            for c in members.tolist():
                for k in self.slots_of.get(c, ()):
                    hits[k] = hits.get(k, 0) + 1
            if any(self.left[k] - h < 1 for k, h in hits.items()):
                return False
            for k, h in hits.items():
                self.left[k] -= h
        self.removed[members] = True
        self.count += len(members)
        self.taken.append((score, members))
        return True

    def mark(self, members: np.ndarray) -> None:
        self.removed[members] = True
        self.count = int(self.removed.sum())

    def give_back(self, round_to: int) -> None:
        """Restore the best removed candidates until the kept count is a multiple of ``round_to``."""
        while self.taken and (self.group.size - self.count) % round_to:
            _, members = self.taken.pop()
            self.removed[members] = False
            self.count -= len(members)
            for c in members.tolist():
                for k in self.slots_of.get(c, ()):
                    self.left[k] += 1


def _target_keep(n: int, ratio: float, round_to: int | None, min_keep: float) -> int:
    keep = max(int(math.floor(n * (1.0 - ratio) + 0.5)), int(math.ceil(min_keep * n)), 1)
    if round_to:
        keep = min(n, int(math.ceil(keep / round_to)) * round_to)
    return keep


def make_plan(
    graph,
    scores: dict[int, torch.Tensor],
    ratio: float,
    round_to: int | None = None,
    global_ranking: bool = False,
    min_keep: float = 0.0,
) -> PruningPlan:
    if not 0.0 <= ratio < 1.0:
        raise GraphError(f"ratio is the fraction of channels removed and must be in [0, 1), got {ratio}")
    if round_to is not None and round_to < 1:
        raise GraphError(f"round_to must be a positive integer, got {round_to}")
    trackers: dict[int, _Tracker] = {}
    scores_np: dict[int, np.ndarray] = {}
    caps: dict[int, int] = {}
    pool: list[tuple[float, int, int, np.ndarray]] = []
    for gid, sc in scores.items():
        g = graph.group(int(gid))
        if not g.prunable:
            continue
        s = torch.as_tensor(sc).detach().to("cpu", torch.float64).reshape(-1).numpy()
        if s.size != g.size:
            raise GraphError(f"scores for group {gid} have {s.size} values, the group has {g.size} channels")
        if not np.isfinite(s).all():
            raise GraphError(f"scores for group {gid} contain NaN or infinite values")
        t = trackers[g.id] = _Tracker(g)
        scores_np[g.id] = s
        if global_ranking:
            caps[g.id] = g.size - max(int(math.ceil(min_keep * g.size)), 1)
        else:
            caps[g.id] = g.size - _target_keep(g.size, ratio, round_to, min_keep)
        st = structure(g)
        if not global_ranking and not st.buckets and not st.nested and not t.slots_of:
            order = st.removable[np.argsort(s[st.removable], kind="stable")]  # the common case, vectorised
            t.mark(order[: max(0, min(caps[g.id], len(order), g.size - 1))])
            continue
        pool.extend((score, r, g.id, members) for score, r, members in _candidates(g, s))
    pool.sort(key=lambda c: (c[0], c[1], c[2]))
    budget = int(round(ratio * sum(graph.group(g).size for g in trackers))) if global_ranking else None
    total, threshold = 0, -np.inf
    for score, _, gid, members in pool:
        t = trackers[gid]
        if t.count + len(members) > caps[gid] or (budget is not None and total + len(members) > budget):
            continue
        if t.try_take(score, members):
            total += len(members)
            threshold = score
    for gid, t in trackers.items():
        if structure(t.group).nested:
            s = scores_np[gid]
            want = caps[gid] if not global_ranking else min(caps[gid], int((s <= threshold).sum()))
            t.mark(_solve_nested(t.group, s, want))
    kept = {}
    for gid, t in trackers.items():
        if global_ranking and round_to:
            t.give_back(round_to)
        if t.count:
            kept[gid] = torch.from_numpy(np.flatnonzero(~t.removed))
    meta = {"ratio": ratio, "round_to": round_to, "global_ranking": global_ranking, "min_keep": min_keep}
    return PruningPlan(kept=kept, meta=meta)


def validate(graph, plan: PruningPlan) -> None:
    """Raise GraphError naming the group when ``plan`` breaks one of the graph's rules."""
    for gid, idx in plan.kept.items():
        if not 0 <= gid < len(graph.groups):
            raise GraphError(f"plan names group {gid}, but the graph has groups 0..{len(graph.groups) - 1}")
        g = graph.groups[gid]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= g.size):
            raise GraphError(f"plan keeps channel {int(idx.max())} of group {gid}, which has {g.size} channels")
        keep = np.zeros(g.size, dtype=bool)
        keep[idx.numpy()] = True
        if keep.all():
            continue
        if not g.prunable:
            raise GraphError(f"plan prunes group {gid}, which cannot be pruned: {g.reason}")
        lost = np.flatnonzero(g.fixed.numpy() & ~keep)
        if lost.size:
            raise GraphError(
                f"plan removes channel {int(lost[0])} of group {gid}, which must stay: {'; '.join(g.fixed_reasons)}"
            )
        for what, blocks in g.blocks:
            counts = [int(keep[b.numpy()].sum()) for b in blocks]
            if len(set(counts)) > 1 or min(counts) < 1:
                raise GraphError(
                    f"plan keeps {counts} channels in the blocks of {what} (group {gid}); "
                    "they must be equal and non-zero"
                )
        for s in g.slots:
            if s.role in ("out", "through") and not keep[s.channel.numpy()].any():
                raise GraphError(f"plan removes every channel of {s.module} ({s.role}) in group {gid}")

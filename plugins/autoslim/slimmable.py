"""Width switching on a dense model: the slimmable network of AutoSlim (Yu & Huang, arXiv
1903.11728, §3.1; research/algorithms.md §5.1-5.4), over the engine's channel groups.

Each prunable group (a *unit*: one layer's filters, or a whole residual stream, §5.4) is split
into ``bins`` channel groups (10 in the paper); a width configuration says how many of them each
unit keeps, always the *first* channels of the group (lower-index channels kept, as slimmable
networks slice ``weight[:k]``). Instead of slicing weights, forward hooks multiply the outputs of
every producer and per-channel module (conv, BN, depthwise conv) by a 0/1 channel mask, so every
consumer sees zeros where the narrow network has no channel. BatchNorm statistics are per
channel, so with statistics calibrated at that width the masked dense model computes exactly
what the physically pruned model (``graph.apply`` of :meth:`Slimmable.plan_of`) computes.

BN post-statistics calibration (§5.2, JiahuiYu ``bn_calibration_init``): reset the running
statistics, ``momentum=None`` (a cumulative average) and forward a few batches with BN in
*training* mode (in eval mode the statistics never change: ≈0 accuracy, issue #35).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan

Config = dict[int, int]  # unit (group id) -> level (1 .. number of levels); absent = widest


class Slimmable:
    """Masks ``model``'s channels to any width configuration of ``graph``'s prunable groups.

    ``levels[gid]`` lists the free-channel counts a unit can keep (level ``i`` keeps
    ``levels[gid][i-1]``, ``ceil(n·i/bins)`` rounded up to ``round_to``); channels the engine
    marks ``fixed`` always stay. Groups with count constraints (grouped-conv blocks, ``chunk``)
    are not slimmed: the first channels of such a group would break the equal-blocks rule.
    """

    def __init__(self, model: nn.Module, graph, bins: int = 10, round_to: int | None = None, min_level: int = 1):
        if bins < 1:
            raise DetpruneError(f"autoslim: bins must be a positive integer, got {bins}")
        self.model, self.graph, self.bins = model, graph, int(bins)
        self.units: list[int] = []
        self.levels: dict[int, list[int]] = {}
        self._fixed: dict[int, torch.Tensor] = {}
        self._free: dict[int, torch.Tensor] = {}
        for g in graph.prunable_groups():
            if g.blocks:
                continue
            free = torch.nonzero(~g.fixed).flatten()
            n = len(free)
            if n < 2:
                continue
            b = min(self.bins, n)
            counts = sorted({min(n, _round_up(math.ceil(n * i / b), round_to)) for i in range(1, b + 1)})
            counts = counts[max(0, min(min_level, len(counts)) - 1) :]
            if len(counts) < 2:
                continue
            self.units.append(g.id)
            self.levels[g.id] = counts
            self._fixed[g.id] = torch.nonzero(g.fixed).flatten()
            self._free[g.id] = free
        sizes = np.array([g.size for g in graph.groups], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        self._raw = self._offsets[graph.group_of] + graph.chan_of  # raw channel id -> flat group channel
        self._targets = self._hook_targets()
        self._masks: dict[str, torch.Tensor | None] = {}
        self._handles: list[Any] = []
        self.config: Config = self.max_config()

    # ---- configurations -------------------------------------------------------------------------
    def max_config(self) -> Config:
        return {u: len(self.levels[u]) for u in self.units}

    def min_config(self) -> Config:
        return {u: 1 for u in self.units}

    def random_config(self, generator: torch.Generator) -> Config:
        """A non-uniform width: each unit draws its own level (JiahuiYu ``FLAGS.nonuniform``)."""
        return {u: int(torch.randint(1, len(self.levels[u]) + 1, (), generator=generator)) for u in self.units}

    def uniform_config(self, fraction: float) -> Config:
        """Every unit at the largest level keeping at most ``fraction`` of its free channels."""
        out = {}
        for u in self.units:
            n = len(self._free[u])
            ok = [i + 1 for i, c in enumerate(self.levels[u]) if c <= fraction * n + 1e-9]
            out[u] = ok[-1] if ok else 1
        return out

    def kept(self, config: Mapping[int, int]) -> dict[int, torch.Tensor]:
        """Kept group channels per narrowed unit: fixed ones plus the first free ones."""
        out = {}
        for u in self.units:
            level = int(config.get(u, len(self.levels[u])))
            if not 1 <= level <= len(self.levels[u]):
                raise DetpruneError(f"autoslim: unit {u} has levels 1..{len(self.levels[u])}, got {level}")
            count = self.levels[u][level - 1]
            if count < len(self._free[u]):
                out[u] = torch.sort(torch.cat([self._fixed[u], self._free[u][:count]])).values
        return out

    def plan_of(self, config: Mapping[int, int]) -> PruningPlan:
        """The physical plan of ``config`` ("first k channels" of every narrowed unit)."""
        return PruningPlan(self.kept(config))

    def keep_raw(self, config: Mapping[int, int]) -> np.ndarray:
        """Per raw channel id of the graph: is it kept at ``config``?"""
        flat = np.ones(self._offsets[-1], dtype=bool)
        for u, idx in self.kept(config).items():
            seg = np.zeros(self._offsets[u + 1] - self._offsets[u], dtype=bool)
            seg[idx.numpy()] = True
            flat[self._offsets[u] : self._offsets[u + 1]] = seg
        return flat[self._raw]

    # ---- masking hooks --------------------------------------------------------------------------
    def _hook_targets(self) -> dict[str, tuple[np.ndarray, int]]:
        """Modules whose output carries a unit's channels: name -> (raw ids of the output, channel dim)."""
        units = set(self.units)
        out = {}
        for name, rec in self.graph.records.items():
            ids = rec.out if rec.out is not None else rec.through
            if ids is None or not units & set(np.unique(self.graph.group_of[ids]).tolist()):
                continue
            module = self.model.get_submodule(name)
            dim = -1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1
            out[name] = (np.asarray(ids), dim)
        return out

    def attach(self) -> Slimmable:
        """Install the masking hooks (idempotent)."""
        if not self._handles:
            for name in self._targets:
                self._handles.append(self.model.get_submodule(name).register_forward_hook(self._hook(name)))
            self.set_config(self.config)
        return self

    def detach(self) -> None:
        """Remove the hooks: the model is the plain dense model again."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def set_config(self, config: Mapping[int, int]) -> None:
        """Switch the width: from now on, forwards compute the network of ``config``."""
        self.config = {u: int(config.get(u, len(self.levels[u]))) for u in self.units}
        keep = self.keep_raw(self.config)
        device = _device_of(self.model)
        self._masks = {}
        for name, (ids, _dim) in self._targets.items():
            m = keep[ids]
            self._masks[name] = None if m.all() else torch.from_numpy(m).to(device=device, dtype=torch.float32)

    def calibrate(self, batches: Iterable[torch.Tensor]) -> int:
        """BN post-statistics at the current width (:func:`calibrate_bn`) for the *kept* channels;
        the dropped channels keep their previous statistics, so the dense model stays usable."""
        before = bn_state(self.model)
        n = calibrate_bn(self.model, batches)
        keep = self.keep_raw(self.config)
        names = {m: name for name, m in self.model.named_modules()}
        with torch.no_grad():
            for m, (mean, var, _) in zip(batchnorms(self.model), before):
                rec = self.graph.records.get(names[m])
                if rec is None or rec.through is None:
                    continue
                drop = torch.from_numpy(~keep[rec.through]).to(mean.device)
                m.running_mean[drop] = mean[drop]
                m.running_var[drop] = var[drop]
        return n

    @contextlib.contextmanager
    def width(self, config: Mapping[int, int]) -> Iterator[None]:
        """``with slim.width(cfg): model(x)``; restores the previous width afterwards."""
        old = dict(self.config)
        self.set_config(config)
        try:
            yield
        finally:
            self.set_config(old)

    def _hook(self, name: str):
        dim = self._targets[name][1]

        def mask_output(module: nn.Module, inputs: Any, output: Any) -> Any:
            mask = self._masks.get(name)
            if mask is None or not torch.is_tensor(output):
                return None
            d = dim % output.dim()
            if output.shape[d] != mask.numel():
                raise DetpruneError(
                    f"autoslim: module '{name}' produced {output.shape[d]} channels on dim {d}, "
                    f"the graph expects {mask.numel()}; re-trace the model"
                )
            shape = [1] * output.dim()
            shape[d] = mask.numel()
            return output * mask.to(device=output.device, dtype=output.dtype).view(shape)

        return mask_output


# ---- BatchNorm post-statistics -----------------------------------------------------------------


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def bn_state(model: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """A copy of every BN's running statistics (to restore after a search)."""
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in batchnorms(model)]


def load_bn_state(model: nn.Module, state: list[tuple[torch.Tensor, ...]]) -> None:
    with torch.no_grad():
        for m, (mean, var, n) in zip(batchnorms(model), state):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Post-statistics BN calibration (§5.2): reset, cumulative average, BN in training mode.

    Only the BN layers switch to training mode (dropout stays off, so calibration is deterministic);
    returns the number of batches seen. The model's own train/eval mode is restored.
    """
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    was = [m.training for m in model.modules()]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        n = 0
        for images in batches:
            model(images)
            n += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, t in zip(model.modules(), was):
            m.training = t
    return n


@contextlib.contextmanager
def frozen_statistics(model: nn.Module) -> Iterator[None]:
    """BN running statistics are not updated (``momentum=0``) for the duration; training-mode BN still
    normalises with batch statistics. The sandwich rule trains narrow widths under it, so the running
    statistics stay those of the widest network, which the Trainer evaluates (US-Nets keep private
    statistics per width; the others are calibrated afterwards, §5.2)."""
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    counts = [m.num_batches_tracked.clone() for m in bns]
    try:
        for m in bns:
            m.momentum = 0.0
        yield
    finally:
        with torch.no_grad():
            for m, mom, n in zip(bns, momenta, counts):
                m.momentum = mom
                m.num_batches_tracked.copy_(n)


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Eval mode except BN, which normalises with each batch's statistics and updates nothing
    (mmrazor's ``bn_training_mode=True`` search, §5.2)."""
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    was = [m.training for m in model.modules()]
    saved = bn_state(model)
    try:
        model.eval()
        for m in bns:
            m.momentum = 0.0
            m.train()
        yield
    finally:
        load_bn_state(model, saved)
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, t in zip(model.modules(), was):
            m.training = t


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple or multiple <= 1 else int(math.ceil(n / multiple) * multiple)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

"""Built-in data-driven and baseline criteria: ``apoz`` and ``random``.

``apoz`` is the Average Percentage of Zeros of Hu et al., "Network Trimming: A Data-Driven Neuron
Pruning Approach towards Efficient Deep Architectures" (arXiv 1607.03250, §3): after a ReLU, a
channel whose activations are mostly exactly zero contributes little, so

    APoZ_c = Σ_k Σ_j [O_c,j(k) = 0] / (N · M)

over N validation/training images k and the M positions j of channel c's output map, and the
channels with the highest APoZ go first (score ``1 - APoZ``, higher = keep). We measure it where
the channel is *consumed*: a forward pre-hook on every Conv2d / ConvTranspose2d / Linear that reads
a prunable group (its ``"in"`` slots) counts the exactly-zero inputs per input position, so the
number reflects what the next layer actually sees (after ReLU, pooling, a concatenation). A
flatten -> Linear consumer sees each channel at H·W positions: their fractions are averaged; a
channel read by several consumers gets the mean over those consumers. A channel of the group that
no hooked consumer reads gets APoZ 0 (it is kept unless the ranking must take it).

``random`` is the sanity baseline every pruning paper should beat: uniform scores in [0, 1) from a
generator seeded by (seed, group id), so one group gets the same scores on every call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Criterion
from detprune_plugins.common.sampling import sampled_batches

#: consumers whose input channel axis we know how to read (dim 1 of a batched conv input, last of a Linear's)
CONSUMERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
DEFAULT_IMAGES = 256


class CriterionOptionError(DetpruneError, ValueError):
    """A criterion option has a value it cannot use."""


def _int(crit: str, name: str, value: Any, low: int | None = None) -> int:
    integral = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise CriterionOptionError(f"{crit} option '{name}' must be an integer, got {value!r}")
    v = int(value)
    if low is not None and v < low:
        raise CriterionOptionError(f"{crit} option '{name}' must be an integer >= {low}, got {value!r}")
    return v


def _bool(crit: str, name: str, value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, (bool, int)):
        return bool(value)
    raise CriterionOptionError(f"{crit} option '{name}' must be true or false, got {value!r}")


def _producers(group) -> str:
    return ", ".join(group.modules("out")) or "no producer"


def _no_loader(group) -> DetpruneError:
    return DetpruneError(
        f"criterion 'apoz' cannot score group {group.id} (producers: {_producers(group)}): it counts zero "
        "activations on training images, but no training loader was given (pass --data, or "
        "PruneContext(train_loader=...))"
    )


class _ZeroCounter:
    """Forward pre-hook on one consumer: exactly-zero inputs and values seen, per input position."""

    def __init__(self, name: str, module: nn.Module):
        self.name, self.module = name, module
        self.zeros: torch.Tensor | None = None  # float64 [positions]
        self.count = 0  # values seen per position

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not args or not torch.is_tensor(args[0]):
            return
        x = args[0]
        if isinstance(module, nn.Linear):
            flat = x.reshape(-1, x.shape[-1])  # [batch * tokens, features]
        else:  # a conv: channels at dim 1 when batched, dim 0 when not
            axis = 0 if x.dim() == len(module.kernel_size) + 1 else 1
            flat = x.movedim(axis, -1).reshape(-1, x.shape[axis])
        zeros = (flat == 0).sum(0).to(torch.float64).cpu()
        if self.zeros is None:
            self.zeros = zeros
        elif len(self.zeros) != len(zeros):
            raise DetpruneError(f"criterion 'apoz': consumer '{self.name}' changed its input width between batches")
        else:
            self.zeros += zeros
        self.count += flat.shape[0]

    def fraction(self) -> torch.Tensor | None:
        return None if self.zeros is None or self.count == 0 else self.zeros / self.count


class APoZ(Criterion):
    """1 - Average Percentage of Zeros of a channel's activations where its consumers read them (Hu et al. 2016)."""

    def __init__(self, images: int = DEFAULT_IMAGES, seed: int | None = None, progress: bool = True) -> None:
        """
        :param images: training images (``ctx.train_loader``) run through the model to count zeros.
        :param seed: seed of the loader pass (shuffling, augmentation), restored after; default ``ctx.seed``.
        :param progress: show a progress bar while counting (only when the run shows bars).
        """
        self.images = _int("apoz", "images", images, 1)
        self.seed = None if seed is None else _int("apoz", "seed", seed)
        self.progress = _bool("apoz", "progress", progress)
        #: consumer module name -> fraction of exactly-zero inputs per input position (None: not prepared)
        self.zero_fraction: dict[str, torch.Tensor] | None = None
        self._hooked: set[str] = set()

    # ---- lifecycle ----------------------------------------------------------------------------
    def prepare(self, model: nn.Module, graph, ctx: PruneContext) -> None:
        """One pass of ``images`` training images, counting zeros at every consumer of a prunable group."""
        self.zero_fraction, self._hooked = {}, set()
        groups = [g for g in graph.prunable_groups() if self._consumers(model, g)]
        if groups:
            names = [s.module for g in groups for s in self._consumers(model, g)]
            self._collect(model, names, ctx, groups[0])

    def score(self, model: nn.Module, group, ctx: PruneContext) -> torch.Tensor:
        consumers = self._consumers(model, group)
        if not consumers:
            why = "no consumer layer" if not group.consumers else "no Conv or Linear consumer layer"
            raise DetpruneError(
                f"criterion 'apoz' cannot score group {group.id} (producers: {_producers(group)}): {why} reads "
                "its channels, so there are no activations to count zeros in"
            )
        names = list(dict.fromkeys(s.module for s in consumers))
        if self.zero_fraction is None or any(n not in self._hooked for n in names):
            if ctx.train_loader is None:
                raise _no_loader(group)
            self.prepare(model, ctx.require_graph(model), ctx)  # used without prepare(): count now
            missing = [n for n in names if n not in self._hooked]
            if missing:  # a group outside the graph's prunable ones
                self._collect(model, missing, ctx, group)
        apoz = torch.zeros(group.size, dtype=torch.float64)
        seen = torch.zeros(group.size, dtype=torch.float64)
        for name in names:
            frac = self.zero_fraction.get(name)
            if frac is None:
                continue  # hooked but never called in the forward pass
            total = torch.zeros(group.size, dtype=torch.float64)
            positions = torch.zeros(group.size, dtype=torch.float64)
            for slot in consumers:
                if slot.module != name:
                    continue
                if int(slot.index.max()) >= len(frac):
                    raise DetpruneError(
                        f"criterion 'apoz': consumer '{name}' read {len(frac)} input channels, the graph says more: "
                        "score the model the graph was traced from"
                    )
                total.index_add_(0, slot.channel, frac[slot.index])
                positions.index_add_(0, slot.channel, torch.ones(len(slot.index), dtype=torch.float64))
            hit = positions > 0
            apoz[hit] += total[hit] / positions[hit]
            seen[hit] += 1
        if not (seen > 0).any():
            raise DetpruneError(
                f"criterion 'apoz' cannot score group {group.id} (producers: {_producers(group)}): "
                f"its consumers ({', '.join(names)}) never ran in the forward pass"
            )
        return (1.0 - apoz / seen.clamp_min(1.0)).float()

    def reset(self) -> None:
        self.zero_fraction, self._hooked = None, set()

    # ---- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _consumers(model: nn.Module, group) -> list:
        return [s for s in group.consumers if isinstance(model.get_submodule(s.module), CONSUMERS)]

    @torch.no_grad()
    def _collect(self, model: nn.Module, names: Iterable[str], ctx: PruneContext, group) -> None:
        """Count zeros at the consumers ``names`` over ``self.images`` training images."""
        names = [n for n in dict.fromkeys(names) if n not in self._hooked]
        if not names:
            return
        loader = ctx.train_loader
        if loader is None:
            raise _no_loader(group)
        counters = [_ZeroCounter(n, model.get_submodule(n)) for n in names]
        handles = [c.module.register_forward_pre_hook(c) for c in counters]
        params = [p for p in model.parameters() if p.is_floating_point()]
        seed = ctx.seed if self.seed is None else self.seed
        batches = sampled_batches(
            model, loader, self.images, seed, who="criterion 'apoz' ", error=DetpruneError,
            desc=f"apoz: counting zeros at {len(counters)} layer(s)", progress=self.progress and ctx.progress,
            dtype=params[0].dtype if params else None,
            empty="criterion 'apoz': the training loader gave no images to count zeros on",
        )  # fmt: skip
        try:
            for x in batches:
                model(x)
        finally:
            for h in handles:
                h.remove()
        assert self.zero_fraction is not None
        for c in counters:
            self._hooked.add(c.name)
            frac = c.fraction()
            if frac is not None:
                self.zero_fraction[c.name] = frac


class RandomCriterion(Criterion):
    """Uniform random scores, seeded per (seed, group): the baseline a real criterion must beat."""

    def __init__(self, seed: int | None = None) -> None:
        """
        :param seed: random seed; default ``ctx.seed``. A group gets the same scores on every call.
        """
        self.seed = None if seed is None else _int("random", "seed", seed)

    def score(self, model: nn.Module, group, ctx: PruneContext | None = None) -> torch.Tensor:
        seed = self.seed if self.seed is not None else (ctx.seed if ctx is not None else 0)
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(group.id)) % 2**63)
        return torch.rand(group.size, generator=gen, dtype=torch.float32)


@detprune.hookimpl
def detprune_criteria():
    return {"apoz": APoZ, "random": RandomCriterion}

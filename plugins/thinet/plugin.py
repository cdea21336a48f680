"""ThiNet (Luo, Wu & Lin, ICCV 2017, arXiv 1707.06342): prune layer i by what layer i+1 needs.

Three plugins share one sampler (:mod:`detprune_plugins.thinet.sampling`):

* criterion ``thinet`` - §3.2 (greedy channel selection, Algorithm 1): scores a group's channels
  by ThiNet's greedy removal order (the channel the consumers' outputs miss least goes first);
* pruner ``thinet`` - §3.1 (framework) and §3.3 (pruning strategy): ``mode="oneshot"`` selects
  every group on the dense model; ``mode="layerwise"`` prunes group by group, input side first,
  on a masked dense model with LSQ scaling and optional short fine-tuning
  (:mod:`detprune_plugins.thinet.layerwise`). ``scope="inner"`` (default) prunes only groups with a
  single producer, as the paper prunes only the first two convs of each ResNet bottleneck;
  ``scope="all"`` also prunes coupled residual trunks
  (rows from every consumer of the trunk, channels removed from every producer);
* compensator ``thinet-lsq`` - §3.2 ("minimize the reconstruction error"): least-squares scales
  of every consumer's kept input channels, folded into the pruned model's weights.

Section numbers follow the arXiv version as recalled (3.1 framework, 3.2 data-driven channel
selection, 3.3 pruning strategy); the math follows the reference code (algorithms.md §3).

How the compensator gets the samples: through :data:`CACHE`, a cache held *weakly by the model
object* and validated by a digest of its weights. The pruner's samples of the dense model are
reused when the compensator is handed the same, unchanged model with the same loader and sampling
settings (the usual prune -> apply -> compensate trip); otherwise (another pruner, a copied or
retrained model) the compensator re-samples deterministically with the same seed. Nothing travels
in ``plan.meta`` (it must stay JSON for recipes) or in ``ctx.options`` (user settings), and
``thinet-lsq`` also works after any other pruner.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Compensator, Criterion, Pruner
from detprune_plugins.thinet.layerwise import prune_layerwise
from detprune_plugins.thinet.sampling import (
    ConsumerSamples,
    column_map,
    sample_consumers,
    unsupported_reason,
)
from detprune_plugins.thinet.select import (
    consumer_scales,
    greedy_removal,
    group_gram,
    order_scores,
    scale_inputs,
)

log = logging.getLogger("detprune.thinet")

DEFAULT_IMAGES, DEFAULT_LOCATIONS = 256, 10  # "a few hundred images" (issue 8), 10 samples per image (reference code)


class ThiNetOptionError(DetpruneError, ValueError):
    """A ThiNet option has a value it cannot use."""


def _int(name: str, value: Any, low: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ThiNetOptionError(f"thinet option '{name}' must be an integer, got {value!r}") from None
    if v < low or (isinstance(value, float) and v != value):
        raise ThiNetOptionError(f"thinet option '{name}' must be an integer >= {low}, got {value!r}")
    return v


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ThiNetOptionError(f"thinet option '{name}' must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, (bool, int)):
        return bool(value)
    raise ThiNetOptionError(f"thinet option '{name}' must be true or false, got {value!r}")


# ---- the sample cache ---------------------------------------------------------------------------
def weights_digest(model: nn.Module) -> tuple[tuple, torch.Tensor]:
    """Shapes and (sum, sum of squares) of every floating parameter and buffer: changes when weights do."""
    ts = [t.detach() for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if not ts:
        return (), torch.zeros(0)
    sums = torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in ts]).cpu()
    return tuple(tuple(t.shape) for t in ts), sums


@dataclass
class _Entry:
    loader: Any
    digest: tuple[tuple, torch.Tensor]
    samples: dict[str, ConsumerSamples] = field(default_factory=dict)


class SampleCache:
    """ThiNet samples per model object (held weakly), reused while its weights are unchanged."""

    def __init__(self) -> None:
        self._store: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Entry]] = weakref.WeakKeyDictionary()

    def get(
        self,
        model: nn.Module,
        records: dict,
        modules: Iterable[str],
        loader: Any,
        images: int,
        locations: int,
        seed: int,
        progress: bool = True,
    ) -> dict[str, ConsumerSamples]:
        modules = list(dict.fromkeys(modules))
        key = (images, locations, seed, id(loader))
        digest = weights_digest(model)
        per_model = self._store.setdefault(model, {})
        entry = per_model.get(key)
        if entry is None or entry.loader is not loader or not _same(entry.digest, digest):
            entry = per_model[key] = _Entry(loader, digest)
        missing = [m for m in modules if m not in entry.samples]
        if missing:
            cols = {m: column_map(records[m].inp) for m in missing}
            entry.samples.update(sample_consumers(model, cols, loader, images, locations, seed, progress=progress))
        return {m: entry.samples[m] for m in modules}

    def clear(self) -> None:
        self._store = weakref.WeakKeyDictionary()


def _same(a: tuple[tuple, torch.Tensor], b: tuple[tuple, torch.Tensor]) -> bool:
    return a[0] == b[0] and torch.equal(a[1], b[1])


CACHE = SampleCache()


def consumer_problem(group, model: nn.Module) -> str:
    """Why ThiNet cannot judge this group by its consumers ("" when it can)."""
    if not group.consumers:
        return "no consumer layer whose output could be reconstructed"
    for s in group.consumers:
        why = unsupported_reason(model.get_submodule(s.module))
        if why:
            return f"{s.module}: {why}"
    return ""


def group_scores(group, samples: dict[str, ConsumerSamples]) -> torch.Tensor:
    """ThiNet greedy order as float64 scores (see :func:`order_scores`)."""
    G, energy = group_gram(group, samples)
    order, errors = greedy_removal(G, allowed=~group.fixed)
    return order_scores(order, errors, group.size, energy)


# ---- criterion ----------------------------------------------------------------------------------
class ThiNetCriterion(Criterion):
    """ThiNet greedy reconstruction order: channels the next layer misses least score lowest (Luo et al. 2017, §3.2)."""

    def __init__(
        self,
        images: int = DEFAULT_IMAGES,
        locations: int = DEFAULT_LOCATIONS,
        seed: int | None = None,
        progress: bool = True,
    ) -> None:
        """
        :param images: training images sampled per decision (``ctx.train_loader``; the paper: 10 per class).
        :param locations: random (location, output filter) samples per image (10 in the paper).
        :param seed: sampling seed; default ``ctx.seed``.
        :param progress: show a progress bar while sampling.
        """
        self.images, self.locations = _int("images", images, 1), _int("locations", locations, 1)
        self.seed = None if seed is None else _int("seed", seed, 0)
        self.progress = _bool("progress", progress)
        self._samples: dict[str, ConsumerSamples] | None = None

    def prepare(self, model: nn.Module, graph, ctx: PruneContext) -> None:
        """One sampling pass over the consumers of every group ThiNet can judge (its training images)."""
        names = [s.module for g in graph.prunable_groups() if not consumer_problem(g, model) for s in g.consumers]
        names = list(dict.fromkeys(names))
        cols = {m: column_map(graph.records[m].inp) for m in names}
        seed = ctx.seed if self.seed is None else self.seed
        self._samples = sample_consumers(
            model, cols, ctx.train_loader, self.images, self.locations, seed, progress=self.progress and ctx.progress
        )

    def score(self, model: nn.Module, group, ctx: PruneContext) -> torch.Tensor:
        why = consumer_problem(group, model)
        if why:
            raise DetpruneError(
                f"criterion 'thinet' cannot score group {group.id} ({', '.join(group.modules('out'))}): "
                f"{why}; the 'thinet' pruner leaves such groups unpruned"
            )
        if self._samples is None or any(s.module not in self._samples for s in group.consumers):
            self.prepare(model, ctx.require_graph(model), ctx)  # used without prepare(): sample now
        return group_scores(group, self._samples)

    def reset(self) -> None:
        self._samples = None


# ---- pruner -------------------------------------------------------------------------------------
def _achieved(groups: list, plan: PruningPlan) -> float:
    total = sum(g.size for g in groups)
    return 1.0 - sum(plan.kept_count(g.id, g.size) for g in groups) / total if total else 0.0


class ThiNet(Pruner):
    """ThiNet: keep the channels that best reconstruct the next layer's output; one-shot or layer by layer (Luo et al. 2017)."""  # noqa: E501 - the first line is the plugin's one-line description

    def __init__(
        self,
        images: int = DEFAULT_IMAGES,
        locations: int = DEFAULT_LOCATIONS,
        seed: int | None = None,
        mode: str = "oneshot",
        layer_finetune_steps: int = 0,
        scope: str = "inner",
        scale: bool = True,
        finetune_lr: float = 1e-3,
        progress: bool = True,
    ) -> None:
        """
        :param images: training images sampled per decision (the paper: 10 per class of ImageNet).
        :param locations: random (location, output filter) samples per image (10 in the paper).
        :param seed: sampling seed; default ``ctx.seed``.
        :param mode: ``"oneshot"`` (every group chosen on the dense model; scale with ``thinet-lsq``)
            or ``"layerwise"`` (§3.1: group by group on the model as pruned so far).
        :param layer_finetune_steps: SGD steps after each group in layerwise mode (0: none).
        :param scope: ``"inner"`` (groups with one producer: the paper's ResNet rule) or ``"all"``.
        :param scale: layerwise mode: fold the least-squares scales into the consumers as each group goes.
        :param finetune_lr: learning rate of the per-group fine-tune (the paper's 1e-3).
        :param progress: show progress bars while sampling and fine-tuning.
        """
        self.images, self.locations = _int("images", images, 1), _int("locations", locations, 1)
        self.seed = None if seed is None else _int("seed", seed, 0)
        self.mode = _choice("mode", mode, ("oneshot", "layerwise"))
        self.steps = _int("layer_finetune_steps", layer_finetune_steps, 0)
        self.scope = _choice("scope", scope, ("inner", "all"))
        self.scale = _bool("scale", scale)
        try:
            self.lr = float(finetune_lr)
        except (TypeError, ValueError):
            raise ThiNetOptionError(f"thinet option 'finetune_lr' must be a number, got {finetune_lr!r}") from None
        self.progress = _bool("progress", progress)

    def select(self, model: nn.Module, graph) -> tuple[list, dict[str, str]]:
        """Groups this pruner will prune, and the in-scope groups it leaves (group id -> why)."""
        chosen, skipped = [], {}
        for g in graph.prunable_groups():
            if self.scope == "inner" and len(g.modules("out")) != 1:
                continue
            why = consumer_problem(g, model)
            if why:
                skipped[str(g.id)] = why
                log.warning("thinet: group %d (%s) is not pruned: %s", g.id, ", ".join(g.modules("out")), why)
                continue
            chosen.append(g)
        return chosen, skipped

    def plan(self, model: nn.Module, graph, ctx: PruneContext) -> PruningPlan:
        seed = ctx.seed if self.seed is None else self.seed
        groups, skipped = self.select(model, graph)
        scaled: list[str] = []
        if self.mode == "layerwise":
            if ctx.global_ranking:
                raise ThiNetOptionError(
                    "thinet mode 'layerwise' prunes each group at the asked ratio; global ranking needs mode 'oneshot'"
                )
            res = prune_layerwise(
                model,
                graph,
                groups,
                ctx,
                images=self.images,
                locations=self.locations,
                seed=seed,
                scale=self.scale,
                steps=self.steps,
                lr=self.lr,
                progress=self.progress and ctx.progress,
            )
            plan, scaled = res.plan, res.scaled
            if res.finetune_loss:
                plan.meta["thinet_finetune_loss"] = [round(v, 6) for v in res.finetune_loss]
        else:
            consumers = [s.module for g in groups for s in g.consumers]
            samples = CACHE.get(
                model,
                graph.records,
                consumers,
                ctx.train_loader,
                self.images,
                self.locations,
                seed,
                progress=self.progress and ctx.progress,
            )
            scores = {g.id: group_scores(g, samples) for g in groups}
            plan = graph.plan(
                scores, ctx.ratio, round_to=ctx.round_to, global_ranking=ctx.global_ranking, min_keep=ctx.min_keep
            )
        plan.meta.update(
            pruner="thinet",
            criterion="thinet",
            mode=self.mode,
            scope=self.scope,
            asked_ratio=float(ctx.ratio),
            achieved_ratio=_achieved(graph.prunable_groups(), plan),
            groups_pruned=len(plan.kept),
            global_ranking=bool(ctx.global_ranking),
            thinet_sampling={"images": self.images, "locations": self.locations, "seed": seed},
            thinet_skipped=skipped,
            thinet_scaled=scaled,
            layer_finetune_steps=self.steps if self.mode == "layerwise" else 0,
        )
        return plan


# ---- compensator --------------------------------------------------------------------------------
def _in_axis(module: nn.Module) -> int:
    w = module.weight
    if isinstance(module, nn.Linear):
        return w.shape[1]
    if isinstance(module, nn.ConvTranspose2d):
        return w.shape[0]
    return w.shape[1] * module.groups


class ThiNetLSQ(Compensator):
    """ThiNet least-squares scaling of every consumer's kept input channels (Luo et al. 2017, §3.2)."""

    def __init__(
        self, images: int | None = None, locations: int | None = None, seed: int | None = None, progress: bool = True
    ) -> None:
        """Sampling settings default to the ``thinet`` pruner's (``plan.meta``), else 256 images x 10.

        :param images: training images sampled (default: the ``thinet`` pruner's, from ``plan.meta``, else 256).
        :param locations: samples per image (default: the pruner's, else 10).
        :param seed: sampling seed (default: the pruner's, else ``ctx.seed``).
        :param progress: show a progress bar while sampling.
        """
        self.images = None if images is None else _int("images", images, 1)
        self.locations = None if locations is None else _int("locations", locations, 1)
        self.seed = None if seed is None else _int("seed", seed, 0)
        self.progress = _bool("progress", progress)

    def compensate(self, original: nn.Module, pruned: nn.Module, plan: PruningPlan, ctx: PruneContext) -> None:
        graph = ctx.require_graph(original)
        done = set(plan.meta.get("thinet_scaled", []))
        work: dict[str, torch.Tensor] = {}
        for rec in sorted(graph.records.values(), key=lambda r: r.order):
            if rec.kind not in ("conv", "linear") or rec.inp is None or rec.name in done:
                continue
            kept = graph.kept_index(plan, rec.name, "in")
            if len(kept) == len(rec.inp):
                continue
            why = unsupported_reason(original.get_submodule(rec.name))
            if why:
                log.warning("thinet-lsq: '%s' is not rescaled: %s", rec.name, why)
                continue
            have = _in_axis(pruned.get_submodule(rec.name))
            if have != len(kept):
                raise DetpruneError(
                    f"thinet-lsq: pruned module '{rec.name}' has {have} input channels but the plan keeps "
                    f"{len(kept)}: compensate the model made from this plan"
                )
            work[rec.name] = kept
        if not work:
            return
        meta = plan.meta.get("thinet_sampling", {})
        images = self.images or int(meta.get("images", DEFAULT_IMAGES))
        locations = self.locations or int(meta.get("locations", DEFAULT_LOCATIONS))
        seed = self.seed if self.seed is not None else int(meta.get("seed", ctx.seed))
        samples = CACHE.get(
            original,
            graph.records,
            list(work),
            ctx.train_loader,
            images,
            locations,
            seed,
            progress=self.progress and ctx.progress,
        )
        for name, kept in work.items():
            scale_inputs(pruned.get_submodule(name), consumer_scales(samples[name], kept))


@detprune.hookimpl
def detprune_criteria():
    return {"thinet": ThiNetCriterion}


@detprune.hookimpl
def detprune_pruners():
    return {"thinet": ThiNet}


@detprune.hookimpl
def detprune_compensators():
    return {"thinet-lsq": ThiNetLSQ}

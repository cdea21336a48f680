"""AutoSlim (Yu & Huang, "AutoSlim: Towards One-Shot Architecture Search for Channel Numbers",
arXiv 1903.11728; seed 003; research/algorithms.md §5) as a detprune pruner.

1. **Slimmable training** (§3.1, through the Trainer's ``train_step`` callback): every batch trains
   the widest network on the labels, then the narrowest and ``num_random`` random non-uniform
   widths on the widest one's detached outputs (the sandwich rule with in-place distillation);
   their gradients accumulate into one optimiser step. Widths are switched on the dense model by
   output masks over the engine's channel groups (:mod:`detprune_plugins.autoslim.slimmable`).
2. **Greedy slimming** (§3.2, in :meth:`AutoSlim.plan`): from the widest network, repeatedly take
   away the one channel bin whose removal lowers the held-out score least, recording the widths at
   each FLOPs budget (:mod:`detprune_plugins.autoslim.search`); resumable from ``state``.
3. ``plan`` returns the chosen widths as a plan keeping the first channels of every group, with BN
   statistics calibrated for that width (weights changed in place, structure untouched); the
   pipeline then builds it with ``graph.apply`` and fine-tunes (the paper retrains, §4).

Options (constructor keywords; ``ctx.options`` keys of the same names override them):
``flops`` budgets as kept fractions of the dense FLOPs (default ``1 - ctx.ratio``: the ratio is read
as the fraction of FLOPs removed), ``select`` (the budget whose widths ``plan`` returns; default the
smallest), ``bins`` (10), ``num_random`` (2), ``distill`` (True), ``metric`` (``auto``: top-1 for
classifiers, loss for detectors; ``loss``, ``top1``, ``map50``), ``bn`` (``calibrate`` | ``batch``),
``score_batches`` (4), ``calib_batches`` (4), ``state`` (search state file), ``max_steps``,
``round_to``, ``min_level`` (1), ``seed``, ``verify`` (True: check the masked and the physically
pruned model agree), ``progress``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import detprune
from detprune.data.collate import move_batch
from detprune.errors import DetpruneError
from detprune.eval.measure import count_flops
from detprune.graph.capture import evaluating
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune.plugin.protocols import Pruner
from detprune_plugins.autoslim.distill import detach, distill_loss
from detprune_plugins.autoslim.flops import FlopModel
from detprune_plugins.autoslim.score import BN_MODES, METRICS, Scorer, take_batches
from detprune_plugins.autoslim.search import found_config, greedy_slimming
from detprune_plugins.autoslim.slimmable import (
    Slimmable,
    bn_state,
    frozen_statistics,
    load_bn_state,
)

log = logging.getLogger("detprune.autoslim")


class AutoSlim(Pruner):
    """AutoSlim: slimmable training (sandwich rule, in-place distillation), then greedy slimming to a FLOPs budget."""

    def __init__(
        self,
        flops: Any = None,
        select: float | None = None,
        bins: int = 10,
        num_random: int = 2,
        distill: bool = True,
        metric: str = "auto",
        bn: str = "calibrate",
        score_batches: int = 4,
        calib_batches: int = 4,
        state: str | None = None,
        max_steps: int | None = None,
        round_to: int | None = None,
        min_level: int = 1,
        seed: int = 0,
        verify: bool = True,
        progress: bool = True,
    ):
        """
        :param flops: budgets as kept fractions of the dense FLOPs (a number, a list or ``"0.5,0.3"``;
            default ``1 - ctx.ratio``).
        :param select: the budget whose widths ``plan`` returns (default: the smallest).
        :param bins: channel bins per group (the paper's 10).
        :param num_random: random widths per step besides the widest and narrowest (sandwich rule).
        :param distill: train narrower widths on the widest one's outputs (in-place distillation).
        :param metric: how a width is scored in the search: ``auto`` (top-1 for classifiers, loss for
            detectors), ``loss``, ``top1`` or ``map50``.
        :param bn: BN during scoring: ``calibrate`` (recalibrated per width) or ``batch`` (batch statistics).
        :param score_batches: held-out batches per score.
        :param calib_batches: training batches per BN calibration.
        :param state: JSON file of the search state, written after every step (resume from it).
        :param max_steps: stop the search after this many steps (resumable).
        :param round_to: keep channel counts at multiples of this.
        :param min_level: the fewest bins a group keeps.
        :param seed: seed of the random widths.
        :param verify: check the masked and the physically pruned model agree at the chosen width.
        :param progress: show progress bars.
        """
        self.options = dict(
            flops=flops,
            select=select,
            bins=bins,
            num_random=num_random,
            distill=distill,
            metric=metric,
            bn=bn,
            score_batches=score_batches,
            calib_batches=calib_batches,
            state=state,
            max_steps=max_steps,
            round_to=round_to,
            min_level=min_level,
            seed=seed,
            verify=verify,
            progress=progress,
        )
        _check_options(self.options)  # wrong values fail before any training
        self.steps = 0  # sandwich steps trained (drives the random widths; kept in checkpoints)
        self.slim: Slimmable | None = None
        self.search: dict[str, Any] | None = None
        self._graph = None

    # ---- stage 1: slimmable training (Trainer callback) ----------------------------------------
    def attach(self, graph) -> None:
        """The pipeline's graph of the model about to be trained (else ``train_step`` traces it)."""
        self._graph = graph

    def slimmable(self, model: nn.Module, graph=None, adapter: Any = None) -> Slimmable:
        """Make ``model`` slimmable over ``graph`` (traced from ``adapter.example_inputs`` if None)."""
        graph = graph if graph is not None else self._graph
        if self.slim is not None and self.slim.model is model and (graph is None or self.slim.graph is graph):
            return self.slim.attach()
        if self.slim is not None:
            self.slim.detach()
        if graph is None:
            if adapter is None and self.ctx is None:
                raise DetpruneError("autoslim: making a model slimmable needs its graph or its adapter")
            graph = (self.ctx or PruneContext(adapter=adapter)).require_graph(model)
        o = self.options
        self.slim = Slimmable(model, graph, bins=o["bins"], round_to=o["round_to"], min_level=o["min_level"]).attach()
        if not self.slim.units:
            self.slim.detach()
            raise DetpruneError("autoslim: the model has no channel group that can be slimmed")
        return self.slim

    def train_step(
        self,
        model: nn.Module,
        batch: tuple[Any, ...],
        adapter: Any,
        forward: Callable[[torch.Tensor], Any],
        backward: Callable[[torch.Tensor], None],
    ):
        """One sandwich-rule step (§3.1): widest on labels, narrowest + random widths distilled from it."""
        slim = self.slimmable(model, adapter=adapter)
        images, targets = batch[0], batch[1]
        gen = torch.Generator().manual_seed(int(self.options["seed"]) * 1_000_003 + self.steps)
        widths = [slim.min_config()] + [slim.random_config(gen) for _ in range(int(self.options["num_random"]))]
        try:
            slim.set_config(slim.max_config())
            outputs = forward(images)
            loss, _ = adapter.loss(outputs, targets)
            backward(loss)
            teacher = detach(outputs)
            del outputs
            total, kd_sum = loss.detach(), 0.0
            for cfg in widths:
                slim.set_config(cfg)
                with frozen_statistics(model):
                    student = forward(images)
                kd = (
                    distill_loss(adapter, student, teacher)
                    if self.options["distill"]
                    else adapter.loss(student, targets)[0]
                )
                backward(kd)
                total = total + kd.detach()
                kd_sum += float(kd.detach())
        finally:  # evaluation, checkpoints and copies see the plain dense model
            slim.set_config(slim.max_config())
            slim.detach()
        self.steps += 1
        return total, {"max": float(loss.detach()), "kd": kd_sum / max(len(widths), 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))

    # ---- stage 2: greedy slimming ----------------------------------------------------------------
    def plan(self, model: nn.Module, graph, ctx: PruneContext) -> PruningPlan:
        """Greedy slimming to the FLOPs budgets; the plan of the selected budget (first-k channels)."""
        o = {**self.options, **{k: v for k, v in (ctx.options or {}).items() if k in self.options}}
        _check_options(o)
        targets = _budgets(o["flops"], ctx.ratio)
        select = float(o["select"]) if o["select"] is not None else min(targets)
        if not any(abs(select - t) < 1e-9 for t in targets):
            raise DetpruneError(f"autoslim: select={select} is not one of the FLOPs budgets {targets}")
        if self.steps == 0:
            log.warning(
                "autoslim: the model was not trained as a slimmable network (no sandwich step; "
                "--prune-epochs 0?): greedy slimming ranks widths the network never learned"
            )
        adapter = ctx.adapter
        if adapter is None:
            raise DetpruneError("autoslim: plan needs ctx.adapter (the model's loss scores the widths)")
        inputs = tuple(ctx.example_inputs) or tuple(graph.example_inputs)
        device = next(model.parameters()).device
        inputs = move_batch(inputs, device)
        slim = self.slimmable(model, graph)
        try:
            flop_model = FlopModel(model, graph, inputs)
            score_loader = ctx.val_loader if ctx.val_loader is not None else ctx.train_loader
            if ctx.val_loader is None:
                log.warning("autoslim: no validation loader; scoring widths on training batches")
            batches = take_batches(score_loader, int(o["score_batches"]), seed=ctx.seed)
            calib = [b[0] for b in take_batches(ctx.train_loader, int(o["calib_batches"]), seed=ctx.seed + 1)]
            scorer = Scorer(
                model,
                slim,
                adapter,
                batches,
                calib if o["bn"] == "calibrate" else [],
                metric=o["metric"],
                bn=o["bn"],
                dataset=getattr(score_loader, "dataset", None),
            )
            settings = {
                k: o[k]
                for k in ("bins", "metric", "bn", "score_batches", "calib_batches", "round_to", "min_level", "seed")
            }
            saved = bn_state(model)
            try:
                self.search = greedy_slimming(
                    slim,
                    flop_model,
                    scorer,
                    targets,
                    state_path=o["state"],
                    settings=settings,
                    fingerprint=graph.fingerprint(),
                    max_steps=o["max_steps"],
                    progress=bool(o["progress"]) and ctx.progress,
                )
            finally:
                load_bn_state(model, saved)
            if not self.search["done"]:
                where = f"; run again with state={o['state']!r} to continue" if o["state"] else ""
                raise DetpruneError(
                    f"autoslim: the greedy search stopped after max_steps={o['max_steps']} steps{where}"
                )
            config = found_config(self.search, select)
            slim.set_config(config)
            slim.calibrate([c.to(device) for c in (calib or [b[0] for b in batches])])  # §5.2, for the chosen width
            plan = slim.plan_of(config)
            plan.meta.update(self._meta(slim, flop_model, config, select))
            if o["verify"]:
                self._verify(model, graph, slim, plan, inputs, flop_model(slim.keep_raw(config)))
        finally:
            slim.detach()
        return plan

    def _meta(self, slim: Slimmable, flop_model: FlopModel, config, select: float) -> dict[str, Any]:
        found = [
            {
                "target": f["target"],
                "flops": f["flops"],
                "score": f["score"],
                "widths": {str(u): slim.levels[u][c - 1] for u, c in ((int(k), v) for k, v in f["config"].items())},
            }
            for f in self.search["found"]
        ]
        return {
            "pruner": "autoslim",
            "bins": slim.bins,
            "select": select,
            "found": found,
            "flops_fraction": flop_model(slim.keep_raw(config)) / flop_model.dense,
            "dense_flops": flop_model.dense,
            "sandwich_steps": self.steps,
            "search_steps": len(self.search["history"]),
        }

    @staticmethod
    def _verify(model: nn.Module, graph, slim: Slimmable, plan: PruningPlan, inputs, predicted: float) -> None:
        """The masked model and the physically pruned one must agree, and the FLOPs model must be exact."""
        with evaluating(model), torch.no_grad():
            masked = model(*inputs)
        slim.detach()
        pruned = graph.apply(model, plan)
        with evaluating(pruned), torch.no_grad():
            physical = pruned(*inputs)
        slim.attach()
        a = torch.cat([t.flatten().float() for t in _tensors(masked)])
        b = torch.cat([t.flatten().float() for t in _tensors(physical)])
        err = float((a - b).abs().max()) / max(float(a.abs().max()), 1e-6)
        if err > 1e-3:
            raise DetpruneError(
                f"autoslim: the masked width and the physically pruned model disagree (relative "
                f"error {err:.2e}): a module's output is not masked where its channels go"
            )
        counted = count_flops(pruned, inputs)
        if abs(counted - predicted) > 1e-3 * max(counted, 1):
            log.warning("autoslim: FLOPs model predicted %.4g, counted %.4g on the pruned model", predicted, counted)
        plan.meta["flops_counted"] = int(counted)


def _check_options(o: dict[str, Any]) -> None:
    if o["bn"] not in BN_MODES:
        raise DetpruneError(f"autoslim: bn must be one of {', '.join(BN_MODES)}, got {o['bn']!r}")
    if o["metric"] not in METRICS:
        raise DetpruneError(f"autoslim: metric must be one of {', '.join(METRICS)}, got {o['metric']!r}")
    for key, low in (("bins", 1), ("num_random", 0), ("score_batches", 1), ("calib_batches", 1), ("min_level", 1)):
        if not isinstance(o[key], int) or isinstance(o[key], bool) or o[key] < low:
            raise DetpruneError(f"autoslim: {key} must be an integer >= {low}, got {o[key]!r}")
    if o["flops"] is not None:
        _budgets(o["flops"], 0.0)


def _budgets(flops: Any, ratio: float) -> list[float]:
    if flops is None:
        return [1.0 - float(ratio)]
    given = flops
    if isinstance(flops, str):
        flops = [x for x in flops.split(",") if x.strip()]
    elif isinstance(flops, (int, float)):
        flops = [flops]
    try:
        out = [float(x) for x in flops]
    except (TypeError, ValueError):
        out = []
    if not out or any(not 0.0 < x <= 1.0 for x in out):
        raise DetpruneError(f"autoslim: flops budgets must be fractions of the dense FLOPs in (0, 1], got {given!r}")
    return out


def _tensors(obj: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(obj)[0] if torch.is_tensor(t)]


@detprune.hookimpl
def detprune_pruners():
    return {"autoslim": AutoSlim}

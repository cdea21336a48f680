"""The plugin contract: four hooks that fill detprune's four slots, plus one observer hook.

A plugin is any module (or object) with functions named like these specs and decorated with
``detprune.hookimpl``. It is found through the ``detprune`` entry-point group::

    # the plugin's pyproject.toml
    [project.entry-points.detprune]
    my_plugin = "my_package.my_module"

The built-in plugins register through the very same group (see detprune's own pyproject.toml).

Each of the four kind hooks takes no argument and returns a mapping ``{name: factory}``. Names
are what users type (``--criterion l1``); they are unique per kind across all installed plugins,
and a clash is reported naming both distributions. A factory is usually a class; the host calls
it with keyword options (``factory(**options)``) when the name is asked for, so a plugin pays for
nothing until it is used. The first line of a factory's docstring is its one-line description in
``detprune plugins``.

Factories usually extend the base classes of :mod:`detprune.plugin.protocols`
(``detprune.Criterion``, ``Pruner``, ``Compensator``, ``ModelAdapter``): they define the lifecycle the
host and the Trainer call, with a no-op for every optional step. docs/plugin-guide.md is the
author's guide (registration, lifecycle, context, options, errors, tests).

The hooks are called once per process, when the host first builds its registries (the first
``detprune.plugins()`` call or CLI command). A hook that raises does not stop the others: its
plugin is listed as broken, with the error, by ``detprune plugins``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("detprune")
hookimpl = pluggy.HookimplMarker("detprune")

Factory = Callable[..., Any]


@hookspec
def detprune_criteria() -> Mapping[str, Factory]:
    """Return the channel-importance criteria this plugin provides.

    :returns: ``{name: factory}``; ``factory(**options)`` gives an object with
        ``score(model, group, ctx) -> Tensor`` (see :class:`detprune.plugin.protocols.Criterion`).

    ``score`` receives the model, one :class:`detprune.graph.ChannelGroup` (a set of coupled
    channels: every producer, norm and consumer that must lose the same channels) and the
    :class:`detprune.plugin.context.PruneContext`. It returns a float tensor of shape ``[group.size]``,
    one score per group channel, **higher = keep**. It must not modify the model. Scores are
    compared across groups only when ``ctx.global_ranking`` is set, so a criterion that wants
    global ranking should normalise per layer.

    Called by pruners (and ``detprune.prune(criterion=...)``) once per group per decision.

    Example::

        class L1(detprune.Criterion):
            "Sum of absolute producer weights per channel."
            def score(self, model, group, ctx):
                return group.reduce(model, lambda rows: rows.abs().sum(1), role="out")

        @hookimpl
        def detprune_criteria():
            return {"my-l1": L1}
    """


@hookspec
def detprune_pruners() -> Mapping[str, Factory]:
    """Return the pruning methods this plugin provides.

    :returns: ``{name: factory}``; ``factory(**options)`` gives an object with
        ``plan(model, graph, ctx) -> PruningPlan`` (see :class:`detprune.plugin.protocols.Pruner`).

    ``plan`` decides which channels of each prunable group survive and returns a
    :class:`detprune.graph.plan.PruningPlan` (sorted kept indices per group id, never empty). It may
    look up criteria through ``detprune.plugins().criterion(name)`` and may train the model
    first through ``ctx.train_loader``. It must not change the model's structure: the engine
    applies the plan afterwards.

    The rest of the lifecycle (:class:`detprune.plugin.protocols.Pruner`, each step a no-op unless
    overridden): ``bind(ctx)`` before training (``ctx.graph`` is the traced model), then per
    Trainer step ``train_step`` (forward, ``loss_term``, backward), ``on_after_backward(model)``
    (e.g. the Network Slimming sub-gradient on BN scales), ``on_after_step(model)``; after each
    epoch ``on_epoch_end(model, epoch)`` (e.g. MFP's soft pruning); ``state_dict`` /
    ``load_state_dict`` for resumable runs; ``plot(out_dir)``. A pruner overriding none is one-shot.

    Example::

        class Uniform(detprune.Pruner):
            "Keep the first channels of every group (a baseline)."
            def plan(self, model, graph, ctx):
                keep = {g.id: torch.arange(max(1, round(g.size * (1 - ctx.ratio))))
                        for g in graph.prunable_groups()}
                return PruningPlan(keep)
    """


@hookspec
def detprune_compensators() -> Mapping[str, Factory]:
    """Return the weight compensators this plugin provides.

    :returns: ``{name: factory}``; ``factory(**options)`` gives an object with
        ``compensate(original, pruned, plan, ctx) -> None``.

    Called once, after the engine has physically pruned a copy of the model by ``plan`` and
    before fine-tuning. ``original`` is the dense model (read-only); ``pruned`` is the smaller
    model whose kept weights the compensator rewrites **in place** (e.g. ThiNet's least-squares
    scaling of the consumers' kept input channels; Matrix-Sketching's Frequent-Directions
    filters). It must not change any tensor shape. A plan that removes nothing must leave
    ``pruned`` unchanged.

    Example::

        class BNRecalibration(detprune.Compensator):
            "Re-estimate BN running statistics on a few training batches."
            def compensate(self, original, pruned, plan, ctx):
                recalibrate_bn(pruned, ctx.train_loader, batches=10)
    """


@hookspec
def detprune_model_adapters() -> Mapping[str, Factory]:
    """Return the model families this plugin provides.

    :returns: ``{name: factory}``; ``factory(**args)`` gives a
        :class:`detprune.plugin.protocols.ModelAdapter` configured with JSON-serialisable build arguments
        (``num_classes``, ``width``, ``img_size`` ...), kept in ``adapter.args``.

    An adapter owns ``build()`` (a fresh dense ``nn.Module``), ``example_inputs(batch_size)``,
    ``loss(outputs, targets)``, ``decode(outputs, metas)``, ``protected(model)`` (module names
    whose output channels are model outputs and must not be pruned: detection output convs, the
    classifier's last Linear) and ``task`` (``"classification"`` or ``"detection"``). A saved
    pruning recipe stores ``{"adapter": name, "args": adapter.args}`` and rebuilds through it.

    Example::

        class TinyNet(detprune.ModelAdapter):
            "A two-layer CNN for tests."
            task = "classification"
            def __init__(self, num_classes=10):
                self.args = {"num_classes": num_classes}
            def build(self):
                return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(8, self.args["num_classes"]))
            ...
    """


@hookspec
def detprune_report(result: Any) -> None:
    """Observe a finished run (prune, train, evaluate); for logging and reporting only.

    :param result: a mapping with at least ``{"event": str}``, e.g. ``{"event": "pruned",
        "params_before": ..., "params_after": ..., "plan": ...}``.

    Every implementation is called; return values are ignored and exceptions are reported as a
    warning, never propagated. This hook is never a way to run a method's training logic: that
    belongs to a pruner's callbacks.
    """

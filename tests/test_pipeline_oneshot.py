"""Pruner ``oneshot``: the same plan as ``detprune.prune`` with the same criterion, its options, and
the achieved ratio it records (floors and rounding included)."""

from __future__ import annotations

import pytest
import torch

import detprune
from detprune.errors import DetpruneError
from detprune.graph import trace
from detprune.plugin.context import PruneContext


@pytest.fixture(scope="module")
def resnet():
    adapter = detprune.plugins().adapter("resnet56-cifar", width=0.5)
    model = adapter.build().eval()
    inputs = adapter.example_inputs(1)
    return model, inputs, trace(model, inputs, protected=tuple(adapter.protected(model)))


def _kept(plan):
    return {g: t.tolist() for g, t in plan.kept.items()}


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_oneshot_plans_like_detprune_prune(resnet, criterion):
    model, inputs, graph = resnet
    ctx = PruneContext(example_inputs=inputs, ratio=0.4, criterion=criterion)
    plan = detprune.plugins().pruner("oneshot").plan(model, graph, ctx)
    ref = detprune.prune(model, inputs, ratio=0.4, criterion=criterion, protected=("fc",))
    assert _kept(plan) == _kept(ref.plan)
    assert plan.meta["criterion"] == criterion and plan.meta["pruner"] == "oneshot"


def test_options_override_the_context_and_the_achieved_ratio_counts_floors(resnet):
    model, inputs, graph = resnet
    ctx = PruneContext(example_inputs=inputs, ratio=0.9, criterion="l1")
    plain = detprune.plugins().pruner("oneshot").plan(model, graph, ctx)
    floored = detprune.plugins().pruner("oneshot", criterion="l2", min_keep=0.5).plan(model, graph, ctx)
    groups = graph.prunable_groups()
    total = sum(g.size for g in groups)
    for plan in (plain, floored):
        kept = sum(plan.kept_count(g.id, g.size) for g in groups)
        assert plan.meta["achieved_ratio"] == pytest.approx(1 - kept / total)
    assert floored.meta["criterion"] == "l2" and floored.meta["min_keep"] == 0.5
    assert all(floored.kept_count(g.id, g.size) >= g.size // 2 for g in groups)
    assert floored.meta["achieved_ratio"] <= 0.5 < plain.meta["achieved_ratio"]


def test_global_ranking_removes_the_ratio_of_all_channels(resnet):
    model, inputs, graph = resnet
    ctx = PruneContext(example_inputs=inputs, ratio=0.3, criterion="l1")
    plan = detprune.plugins().pruner("oneshot", global_ranking=True).plan(model, graph, ctx)
    assert plan.meta["global_ranking"] is True
    assert plan.meta["achieved_ratio"] == pytest.approx(0.3, abs=0.01)
    ratios = {1 - plan.kept_count(g.id, g.size) / g.size for g in graph.prunable_groups()}
    assert len(ratios) > 1  # not the same ratio in every group


def test_criterion_options_reach_the_criterion(resnet):
    model, inputs, graph = resnet
    ctx = PruneContext(example_inputs=inputs, ratio=0.5, criterion="l1")
    with pytest.raises(DetpruneError, match="criterion 'l1' .* rejected its options {'bogus': 1}"):
        detprune.plugins().pruner("oneshot", criterion_options={"bogus": 1}).plan(model, graph, ctx)
    plan = detprune.plugins().pruner("oneshot", criterion_options={"normalize": False}).plan(model, graph, ctx)
    assert all(t.numel() > 0 for t in plan.kept.values())
    pruned = graph.apply(model, plan)
    assert pruned(torch.rand(1, 3, 32, 32)).shape == (1, 10)

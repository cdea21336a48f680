"""Built-in criteria l1 / l2: registered through the entry point, faithful per-filter norms,
per-layer normalisation averaged over a group's producers."""

from __future__ import annotations

import pytest
import torch

import detprune
from detprune.graph import trace
from zoo import build


@pytest.mark.parametrize("name,p", [("l1", 1), ("l2", 2)])
def test_single_producer_scores_are_the_normalised_filter_norms(name, p):
    model, x = build("simple_cnn")
    graph = trace(model, x)
    crit = detprune.plugins().criterion(name)
    g = next(g for g in graph.groups if g.modules("out") == ["features.1.0"])
    norms = model.features[1][0].weight.detach().flatten(1).norm(p=p, dim=1)
    assert torch.allclose(crit.score(model, g, None), (norms / norms.mean()).float())
    raw = detprune.plugins().criterion(name, normalize=False).score(model, g, None)
    assert torch.allclose(raw, norms.float())


def test_group_score_is_the_mean_over_producers():
    model, x = build("tiny_resnet")
    graph = trace(model, x)
    g = next(g for g in graph.groups if len(g.producers) == 3)
    per = []
    for slot in g.producers:
        w = model.get_submodule(slot.module).weight.detach().flatten(1).abs().sum(1)
        per.append(w / w.mean())
    expected = torch.stack(per).mean(0).float()
    assert torch.allclose(detprune.plugins().criterion("l1").score(model, g, None), expected)


def test_lowest_l1_filters_are_the_ones_pruned():
    model, x = build("simple_cnn")
    with torch.no_grad():
        model.features[0][0].weight[[1, 5]] *= 1e-3  # two clearly unimportant filters
    result = detprune.prune(model, x, ratio=0.25, criterion="l1")
    g = next(g for g in result.graph.groups if g.modules("out") == ["features.0.0"])
    assert sorted(set(range(8)) - set(result.plan.kept[g.id].tolist())) == [1, 5]


def test_criteria_are_listed_with_descriptions():
    entries = {e.name: e for e in detprune.plugins().entries("criterion")}
    assert entries["l1"].plugin.dist == "detprune" and entries["l1"].description.startswith("Filter L1 norm")
    assert entries["l2"].description.startswith("Filter L2 norm")

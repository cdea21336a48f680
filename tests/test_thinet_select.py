"""ThiNet's selection and scaling: the Gram-form greedy makes the brute-force choice at every step,
scores replay it through graph.plan, least squares recovers known scales and folds into weights."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from detprune.graph import trace
from detprune_plugins.thinet.sampling import sample_consumers
from detprune_plugins.thinet.select import (
    greedy_removal,
    lsq_scales,
    order_scores,
    scale_inputs,
)


def _layer_samples(C: int = 8, seed: int = 0) -> torch.Tensor:
    """Real contributions X[N, C] at the input of a 3x3 conv fed by conv-BN-ReLU (C channels)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(), nn.Conv2d(C, 6, 3, padding=1)
    ).eval()
    data = [(torch.randn(8, 3, 12, 12),)]
    return sample_consumers(net, {"3": torch.arange(C)}, data, images=8, locations=10, progress=False)["3"].X.double()


def _err(X: torch.Tensor, T) -> float:
    return float((X[:, list(T)].sum(1) ** 2).sum())


def test_each_greedy_step_is_the_brute_force_choice():
    """ThiNet Algorithm 1 as the reference code runs it (value_sum over the N samples), vs the Gram form."""
    X = _layer_samples()
    order, errors = greedy_removal(X.T @ X)
    assert sorted(order.tolist()) == list(range(8))
    T: list[int] = []
    for step in range(8):
        cands = {j: _err(X, T + [j]) for j in range(8) if j not in T}  # every subset T ∪ {j}, computed directly
        best = min(cands, key=cands.get)
        assert int(order[step]) == best
        assert errors[step].item() == pytest.approx(cands[best], rel=1e-9)
        T.append(best)


def test_greedy_matches_the_exhaustive_optimum_where_greedy_is_exact():
    X = _layer_samples()
    order, _ = greedy_removal(X.T @ X)
    single = min(range(8), key=lambda j: _err(X, [j]))
    assert int(order[0]) == single  # |T| = 1: greedy is the optimum by definition
    # orthogonal contributions (disjoint sample rows): the error is additive, so greedy = optimum for every |T|
    torch.manual_seed(3)
    Xo = torch.zeros(80, 8, dtype=torch.float64)
    for c in range(8):
        Xo[c * 10 : (c + 1) * 10, c] = torch.randn(10) * (c + 1) * torch.rand(1)
    order, errors = greedy_removal(Xo.T @ Xo)
    for k in range(1, 8):
        best = min(itertools.combinations(range(8), k), key=lambda T: _err(Xo, T))
        assert sorted(order[:k].tolist()) == sorted(best)
        assert errors[k - 1].item() == pytest.approx(_err(Xo, best), rel=1e-9)


def test_blocked_channels_are_never_removed():
    X = _layer_samples()
    allowed = torch.ones(8, dtype=torch.bool)
    allowed[[2, 5]] = False
    order, errors = greedy_removal(X.T @ X, allowed)
    assert len(order) == 6 and not {2, 5} & set(order.tolist())


def test_scores_are_strictly_increasing_along_the_greedy_order():
    X = _layer_samples()
    order, errors = greedy_removal(X.T @ X)
    s = order_scores(order, errors, 8, energy=float(X.sum(1).square().sum()))
    assert s.dtype == torch.float64
    assert (s[order][1:] > s[order][:-1]).all()
    short = order_scores(order[:5], errors[:5], 8, energy=1.0)  # 3 channels never removed (fixed)
    assert (short[order[5:]] > short[order[:5]].max()).all()


def test_graph_plan_replays_the_greedy_removal_for_every_ratio():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1)
    ).eval()
    graph = trace(model, (torch.randn(1, 3, 12, 12),), protected=("3",))
    g = next(g for g in graph.prunable_groups() if g.modules("out") == ["0"])
    X = sample_consumers(model, {"3": torch.arange(8)}, [(torch.randn(8, 3, 12, 12),)], images=8, progress=False)[
        "3"
    ].X.double()
    order, errors = greedy_removal(X.T @ X)
    scores = order_scores(order, errors, 8, 1.0)
    for ratio, k in ((0.25, 2), (0.5, 4), (0.75, 6)):
        plan = graph.plan({g.id: scores}, ratio)
        assert set(range(8)) - set(plan.kept[g.id].tolist()) == set(order[:k].tolist())


def test_least_squares_recovers_known_scales_and_leaves_dead_columns_at_one():
    torch.manual_seed(0)
    X = torch.randn(200, 5, dtype=torch.float64)
    X[:, 3] = 0.0  # a channel ReLU never opened on these samples
    w_true = torch.tensor([0.5, 2.0, -1.0, 7.0, 1.5], dtype=torch.float64)
    w = lsq_scales(X, X @ w_true)
    torch.testing.assert_close(w[[0, 1, 2, 4]], w_true[[0, 1, 2, 4]])
    assert w[3].item() == 1.0
    assert torch.equal(lsq_scales(torch.zeros(10, 3), torch.randn(10)), torch.ones(3, dtype=torch.float64))
    dup = torch.cat([X[:, :1], X[:, :1]], 1)  # collinear columns: the minimum-norm solution, finite
    w = lsq_scales(dup, 3 * X[:, 0])
    torch.testing.assert_close(w, torch.tensor([1.5, 1.5], dtype=torch.float64))


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(6, 4, 3, padding=1, groups=2),
        nn.Conv2d(6, 4, 1),
        nn.ConvTranspose2d(6, 4, 4, 2, 1, groups=2),
        nn.Linear(6, 3),
    ],
    ids=["conv-grouped", "conv", "deconv-grouped", "linear"],
)
def test_scaling_the_weights_equals_scaling_the_input_channels(layer):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5) if not isinstance(layer, nn.Linear) else torch.randn(2, 6)
    s = torch.rand(6, dtype=torch.float64) + 0.5
    shape = (1, 6, 1, 1) if x.dim() == 4 else (1, 6)
    expected = layer(x * s.float().view(shape))
    scale_inputs(layer, s)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


class CatNet(nn.Module):
    """Channels of ``a`` reach two consumers: ``b`` directly and ``e`` through a concat at offset 5."""

    def __init__(self):
        super().__init__()
        self.a, self.d = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.b, self.e = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(9, 2, 3, padding=1)

    def forward(self, x):
        a, d = torch.relu(self.a(x)), torch.relu(self.d(x))
        return self.b(a), self.e(torch.cat([d, a], 1))


def test_group_gram_stacks_consumers_and_reads_concat_offsets():
    from detprune_plugins.thinet.sampling import column_map
    from detprune_plugins.thinet.select import group_gram

    torch.manual_seed(0)
    model = CatNet().eval()
    x = torch.randn(4, 3, 8, 8)
    graph = trace(model, (x,), protected=("b", "e"))
    g = next(g for g in graph.groups if g.modules("out") == ["a"])
    assert sorted(g.modules("in")) == ["b", "e"]
    samples = sample_consumers(
        model, {m: column_map(graph.records[m].inp) for m in ("b", "e")}, [(x,)], images=4, locations=10, progress=False
    )
    G, energy = group_gram(g, samples)
    Xb, Xe = samples["b"].X.double(), samples["e"].X.double()[:, 5:9]  # a sits after d's 5 channels
    torch.testing.assert_close(G, Xb.T @ Xb + Xe.T @ Xe)
    assert energy == pytest.approx(float((samples["b"].y.double() ** 2).sum() + (samples["e"].y.double() ** 2).sum()))

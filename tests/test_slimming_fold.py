"""Compensator ``fold-beta``: the constant act(β) of channels removed with γ = 0 is folded into the
consumers, exactly for 1x1 consumers (bias or the next BN's running mean, through a residual sum
too), approximately for padded k x k convs; what cannot be folded is skipped and reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detprune
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext


def fold(**kw):
    return detprune.plugins().compensator("fold-beta", **kw)


def _zero_gamma(bn: nn.BatchNorm2d, channels):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 1.0)  # some β < 0: ReLU(β) = 0 there, LeakyReLU not
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight[channels] = 0.0


def _prune_and_fold(model, x, plan, **kw):
    graph = trace(model, (x,))
    small = graph.apply(model, plan)
    unfolded = small(x).detach()
    comp = fold(**kw)
    comp.compensate(model, small, plan, PruneContext(example_inputs=(x,), graph=graph))
    return small, unfolded, comp


@torch.no_grad()
def test_fold_into_bias_of_1x1_consumer_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1)
    ).eval()
    _zero_gamma(model[1], [1, 4, 6])
    x = torch.rand(2, 3, 9, 9)
    graph = trace(model, (x,))
    plan = detprune.plugins().pruner("slimming", min_keep=0.0).plan(model, graph, PruneContext(ratio=3 / 8))
    assert plan.kept[1].tolist() == [0, 2, 3, 5, 7]  # the γ = 0 channels go
    small, unfolded, comp = _prune_and_fold(model, x, plan)
    dense = model(x)
    assert (unfolded - dense).abs().max() > 1e-2  # dropping act(β) changes the function...
    assert torch.allclose(small(x), dense, atol=1e-5, rtol=0)  # ...folding it back does not
    assert comp.report["folded"] == {"3": "bias"} and comp.report["not_constant"] == 0


@torch.no_grad()
def test_fold_into_next_bn_running_mean_through_a_residual_sum_is_exact():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU(0.1))
            self.b1 = nn.Sequential(nn.Conv2d(6, 6, 1, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU(0.1))
            self.mid = nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
            self.head = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            a = self.stem(x)
            return self.head(self.mid(a + self.b1(a)))

    torch.manual_seed(1)
    model = Res().eval()
    _zero_gamma(model.stem[1], [2, 5])
    _zero_gamma(model.b1[1], [2, 5])
    _zero_gamma(model.mid[1], [])
    x = torch.rand(2, 3, 7, 7)
    graph = trace(model, (x,))
    res = next(g.id for g in graph.groups if "stem.0" in g.modules("out"))
    plan = PruningPlan({res: [0, 1, 3, 4]})
    small, unfolded, comp = _prune_and_fold(model, x, plan)
    dense = model(x)
    assert (unfolded - dense).abs().max() > 1e-2
    assert torch.allclose(small(x), dense, atol=1e-5, rtol=0)
    # b1 reads the stream (act(β_stem)); mid reads the sum of both producers' constants
    assert comp.report["folded"] == {"b1.0": "running_mean of b1.1", "mid.0": "running_mean of mid.1"}


@torch.no_grad()
def test_padded_3x3_consumer_is_approximate_and_1x1_only_mode_skips_it():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)
    ).eval()
    _zero_gamma(model[1], [0, 3])
    x = torch.rand(1, 3, 12, 12)
    plan = PruningPlan({1: [1, 2, 4, 5, 6, 7]})
    dense = model(x)
    small, unfolded, _ = _prune_and_fold(model, x, plan)
    err = (small(x) - dense).abs()
    assert torch.allclose(err[..., 1:-1, 1:-1], torch.zeros(()), atol=1e-5)  # interior exact
    assert err.max() > 1e-3  # borders see fewer taps: the fold over-corrects there...
    assert err.mean() < 0.5 * (unfolded - dense).abs().mean()  # ...but it is far closer overall
    small1, unfolded1, comp = _prune_and_fold(model, x, plan, kernels="1x1")
    assert torch.equal(small1(x), unfolded1) and comp.report["skipped"] == {"3": "3x3 kernel (kernels='1x1')"}


@torch.no_grad()
def test_channels_without_bn_are_left_alone():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    x = torch.rand(2, 3, 6, 6)
    small, unfolded, comp = _prune_and_fold(model, x, PruningPlan({1: [0, 2, 4]}))
    assert torch.equal(small(x), unfolded)
    assert comp.report["no_bn"] == 3 and comp.report["not_constant"] == 0 and comp.report["folded"] == {}


@torch.no_grad()
def test_keep_everything_plan_changes_nothing():
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    x = torch.rand(1, 3, 4, 4)
    small, unfolded, comp = _prune_and_fold(model, x, PruningPlan({}))
    assert torch.equal(small(x), model(x)) and comp.report["folded"] == {}


def test_bad_option_is_a_clear_error():
    with pytest.raises(detprune.errors.DetpruneError, match=r"^fold-beta: kernels must be 'all' or '1x1', got '3x3'$"):
        fold(kernels="3x3")


@torch.no_grad()
def test_yolov3_fold_brings_the_pruned_detector_closer_to_the_dense_one():
    adapter = detprune.plugins().adapter("yolov3", width=0.25, depth=0.34, img_size=96)
    torch.manual_seed(0)
    model = adapter.build().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # NS after sparsity training: a third of γ at zero, β not
            _zero_gamma(m, torch.randperm(m.num_features)[: m.num_features // 3])
    x = adapter.example_inputs(1)
    graph = trace(model, x, protected=tuple(adapter.protected(model)))
    plan = detprune.plugins().pruner("slimming", shortcut="union").plan(model, graph, PruneContext(ratio=0.3))
    small = graph.apply(model, plan)
    dense = model(*x)
    before = [(s - d).abs().mean() for s, d in zip(small(*x), dense)]
    comp = fold()
    comp.compensate(model, small, plan, PruneContext(example_inputs=x, graph=graph))
    after = [(s - d).abs().mean() for s, d in zip(small(*x), dense)]
    assert comp.report["folded"] and comp.report["not_constant"] == 0 and comp.report["no_bn"] == 0
    assert all(a < 0.5 * b for a, b in zip(after, before)), (before, after)

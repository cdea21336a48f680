"""Op coverage: every channel rule of the vocabulary, each in a tiny model proven by
"zero the removed channels, prune them, compare" (float64) and checked for what it fixes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detprune.graph import trace
from detprune.graph.planner import validate
from zoo import run, zero_removed

OPS = {
    # name: (function of a [N, 8, H, W] feature map -> something the head can read, head in-channels)
    "pixel_shuffle": (lambda y: F.pixel_shuffle(y, 2), 2),
    "pixel_unshuffle": (lambda y: F.pixel_unshuffle(y, 2), 32),
    "native_channel_shuffle": (lambda y: F.channel_shuffle(y, 2), 8),
    "view_shuffle_4": (
        lambda y: y.view(y.shape[0], 4, y.shape[1] // 4, *y.shape[2:]).transpose(1, 2).reshape(y.shape),
        8,
    ),
    "narrow_spatial": (lambda y: y.narrow(2, 1, 4), 8),
    "select_then_stack": (lambda y: torch.stack([y.select(2, 0), y.select(2, 1)], 2), 8),
    "index_select_spatial": (lambda y: y.index_select(3, torch.tensor([0, 2, 3])), 8),
    "repeat_channels": (lambda y: y.repeat(1, 2, 1, 1), 16),
    "expand_gate": (lambda y: y * y.mean(1, keepdim=True).expand_as(y), 8),
    "flip_channels": (lambda y: y.flip(1), 8),
    "tensor_split": (lambda y: torch.cat([p * 2 for p in torch.tensor_split(y, 2, dim=1)], 1), 8),
    "unbind_spatial": (lambda y: torch.stack(y.unbind(2), 2), 8),
    "softmax_spatial": (lambda y: y * y.flatten(2).softmax(-1).view_as(y), 8),
    "topk_spatial": (lambda y: y.flatten(2).topk(3, dim=-1).values.unsqueeze(-1), 8),
    "max_over_space": (lambda y: y.amax((2, 3), keepdim=True) + y, 8),
    "where_relu": (lambda y: torch.where(y > 0, y, 0.1 * y), 8),
    "setitem_spatial": (lambda y: _set_corner(y), 8),
    "interpolate_cat": (
        lambda y: torch.cat([F.interpolate(y, scale_factor=2.0), F.interpolate(y, scale_factor=2.0)], 1),
        16,
    ),
    "sum_of_halves": (lambda y: y.view(y.shape[0], 2, y.shape[1] // 2, *y.shape[2:]).sum(1), 4),
    "permute_linear": (lambda y: y.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), 8),
}


def _set_corner(y):
    z = y.clone()
    z[:, :, :2, :2] = y[:, :, 2:4, 2:4]
    return z


class OpNet(nn.Module):
    def __init__(self, fn, cin):
        super().__init__()
        self.fn = fn
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(cin, 3, 1)

    def forward(self, x):
        return self.head(self.fn(self.a(x)))


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_prunes_equivalently(name):
    fn, cin = OPS[name]
    torch.manual_seed(0)
    model = OpNet(fn, cin).double().eval()
    with torch.no_grad():
        model.a[1].running_mean.uniform_(-0.5, 0.5)
        model.a[1].bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = trace(model, x)
    scores = {g.id: torch.rand(g.size) for g in graph.prunable_groups()}
    plan = graph.plan(scores, 0.5)
    validate(graph, plan)
    zeroed = copy.deepcopy(model)
    zero_removed(zeroed, graph, plan)
    pruned = graph.apply(zeroed, plan)
    ref, got = run(zeroed, (x,))[0], run(pruned, (x,))[0]
    assert ref.shape == got.shape
    assert (ref - got).abs().max().item() <= 1e-10 * max(1.0, ref.abs().max().item())
    a = next(g for g in graph.groups if "a.0" in g.modules("out"))
    assert (a.id in plan.kept) == a.prunable


@pytest.mark.parametrize(
    "name,fn,why",
    [
        ("slice", lambda y: torch.cat([y[:, 2:], y[:, :2]], 1), "'getitem' takes channels at fixed positions"),
        ("split_sizes", lambda y: torch.cat(torch.split(y, [5, 3], 1), 1), "'split' into fixed sizes [5, 3]"),
        ("unbind", lambda y: torch.stack(y.unbind(1), 1), "'unbind' of the channel axis"),
        ("cumsum", lambda y: y.cumsum(1), "'cumsum' along the channel axis"),
        ("index_select", lambda y: y.index_select(1, torch.arange(8)), "'index_select' picks channels"),
        (
            "random_noise",
            lambda y: y + torch.ones(1, 8, 1, 1),
            "combined with a tensor of fixed channel count by 'add'",
        ),
    ],
)
def test_ops_that_fix_channels_say_why(name, fn, why):
    model = OpNet(fn, 8).eval()
    graph = trace(model, torch.randn(1, 3, 8, 8))
    a = next(g for g in graph.groups if "a.0" in g.modules("out"))
    assert any(why in r for r in a.fixed_reasons), a.fixed_reasons
    if name == "slice":  # only the channels before the cut are fixed
        assert a.fixed.tolist() == [True, True] + [False] * 6 and a.prunable
    else:
        assert not a.prunable

"""The torchvision classifier zoo through the engine (random init, small inputs, float64).

Per model: the keep-everything plan is bit-identical; zeroing the channels a 30 % L1 plan removes
and then pruning them leaves the logits unchanged (float64, relative 1e-8); every producer loses
exactly its planned channels; output shapes are unchanged; parameters drop. vgg16_bn runs with
``-m slow``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import detprune
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from zoo import out_channels, randomize_norms, removed_per_producer, run, zero_removed

FAST = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2_x1_0",
    "densenet121",
    "googlenet",
    "inception_v3",
    "regnet_y_400mf",
    "resnext50_32x4d",
    "squeezenet1_1",
    "efficientnet_b0",
]
SLOW = ["vgg16_bn"]  # 120M parameters in float64, copied three times: ~10 s here
EXTRA = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def make(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10, **EXTRA.get(name, {})).eval()
    randomize_norms(model)
    size = 80 if name == "inception_v3" else 64
    return model.double(), (torch.randn(2, 3, size, size, dtype=torch.float64),)


def check(name: str) -> None:
    model, x = make(name)
    graph = trace(model, x)
    assert graph.prunable_groups(), name
    same = graph.apply(model, PruningPlan({}))
    dense = run(model, x)
    assert all(torch.equal(u, v) for u, v in zip(dense, run(same, x)))
    crit = detprune.plugins().criterion("l1")
    plan = graph.plan({g.id: crit.score(model, g) for g in graph.prunable_groups()}, 0.3)
    zeroed = copy.deepcopy(model)
    zero_removed(zeroed, graph, plan)
    pruned = graph.apply(zeroed, plan)
    ref, got = run(zeroed, x), run(pruned, x)
    for u, v in zip(ref, got):
        assert u.shape == v.shape
        assert (u - v).abs().max().item() <= 1e-8 * max(1.0, u.abs().max().item()), name
    for module, n in removed_per_producer(graph, plan).items():
        assert out_channels(pruned.get_submodule(module)) == out_channels(model.get_submodule(module)) - n, module
    before, after = (sum(p.numel() for p in m.parameters()) for m in (model, pruned))
    assert after < 0.85 * before, (name, after / before)


@pytest.mark.parametrize("name", FAST)
def test_zoo_model_prunes_equivalently(name):
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_large_zoo_model_prunes_equivalently(name):
    check(name)

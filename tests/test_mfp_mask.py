"""Soft-pruning masks: a model with a plan's channels zeroed computes what the physically pruned model
computes (toys of every coupling pattern, ResNet-56 with its F.pad shortcut, YOLOv3), and the
neighbour-network context restores the weights bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

import detprune
from detprune.graph import trace
from detprune_plugins.common.channel_mask import channel_mask
from zoo import NOT_EXACT_AFTER_ZEROING, TOYS, build, run


def _plan(model, graph, criterion="l1", ratio=0.5):
    crit = detprune.plugins().criterion(criterion)
    scores = {g.id: crit.score(model, g, None) for g in graph.prunable_groups()}
    return graph.plan(scores, ratio)


def _assert_close(a, b, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        assert torch.allclose(x, y, atol=atol, rtol=0), (x - y).abs().max()


@pytest.mark.parametrize("name", [n for n in TOYS if n not in NOT_EXACT_AFTER_ZEROING])
def test_masked_model_equals_the_physically_pruned_model(name):
    model, x = build(name)
    graph = trace(model, x)
    plan = _plan(model, graph)
    assert plan.kept, "the plan must remove something"
    before = copy.deepcopy(model.state_dict())
    pruned = graph.apply(model, plan)
    mask = channel_mask(model, graph, plan)
    assert mask.numel() > 0
    with mask.applied():
        assert mask.holds()
        masked = run(model, x)
    _assert_close(masked, run(pruned, x), atol=1e-9)  # float64 toys
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "applied() restores every weight"
    assert not mask.holds()


@pytest.mark.parametrize("name", ["simple_cnn", "tiny_resnet"])
def test_masked_equals_pruned_in_train_mode_too(name):
    """BN in train mode normalises by batch statistics: a zero channel still outputs exactly 0."""
    model, x = build(name)
    graph = trace(model, x)
    plan = _plan(model, graph, "l2", 0.4)
    pruned = graph.apply(model, plan).train()
    masked_model = copy.deepcopy(model).train()
    channel_mask(masked_model, graph, plan).zero_()
    _assert_close(run(masked_model, x), run(pruned, x), atol=1e-9)


def test_sfp_mask_without_bn_is_not_the_pruned_model():
    """SFP's original mask (filters only) leaves act(β) on the channel: documented, and it shows."""
    model, x = build("simple_cnn")
    graph = trace(model, x)
    plan = _plan(model, graph)
    with channel_mask(model, graph, plan, through=False).applied():
        masked = run(model, x)
    assert not torch.allclose(masked[0], run(graph.apply(model, plan), x)[0], atol=1e-3)


@pytest.mark.parametrize(
    "name,args",
    [
        ("resnet56-cifar", dict(width=0.5)),  # option-A shortcut: F.pad zero channels stay fixed
        ("yolov3", dict(num_classes=3, img_size=64, width=0.125, depth=0.34)),  # routes, upsample, LeakyReLU
    ],
)
def test_masked_equals_pruned_on_real_architectures(name, args):
    adapter = detprune.plugins().adapter(name, **args)
    model = adapter.build().eval()
    x = adapter.example_inputs(2)
    graph = trace(model, x, protected=tuple(adapter.protected(model)))
    plan = _plan(model, graph, "cosine", 0.4)
    pruned = graph.apply(model, plan)
    with channel_mask(model, graph, plan).applied():
        masked = run(model, x)
    _assert_close(masked, run(pruned, x), atol=1e-5)

"""ThiNet layer by layer: the masked dense model and graph.apply of the returned plan give the same
outputs (so the plan refers to the original graph); zeros survive fine-tuning; input side first."""

from __future__ import annotations

import pytest
import torch

import detprune
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune_plugins.thinet.layerwise import input_side_first
from zoo import NOT_EXACT_AFTER_ZEROING, TOYS, build, flat_outputs

TOY_NAMES = sorted(set(TOYS) - NOT_EXACT_AFTER_ZEROING)  # GroupNorm: zeroing changes group statistics


def _pruner(**kw):
    return detprune.plugins().pruner("thinet", mode="layerwise", images=6, locations=4, progress=False, **kw)


@pytest.mark.parametrize("name", TOY_NAMES)
def test_masked_dense_model_equals_the_pruned_model(name):
    model, x = build(name)
    graph = trace(model, x)
    data = [(torch.randn(3, *x[0].shape[1:], dtype=x[0].dtype),) for _ in range(2)]
    ctx = PruneContext(example_inputs=x, ratio=0.5, train_loader=data, graph=graph)
    plan = _pruner(scope="all").plan(model, graph, ctx)
    assert plan.kept, "nothing was pruned"
    assert plan.meta["thinet_scaled"]  # consumers were rescaled in place
    small = graph.apply(model, plan)
    probe = torch.randn_like(x[0])
    with torch.no_grad():
        for a, b in zip(flat_outputs(model(probe)), flat_outputs(small(probe))):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_fine_tuning_keeps_removed_channels_at_zero_and_the_equivalence():
    ad = detprune.plugins().adapter("vgg16-cifar", width=0.125)
    model = ad.build().eval()
    graph = trace(model, ad.example_inputs(2), protected=ad.protected(model))
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(2)]
    ctx = PruneContext(example_inputs=ad.example_inputs(2), ratio=0.5, adapter=ad, train_loader=data, graph=graph)
    w0 = model.features[0].weight.detach().clone()
    plan = _pruner(layer_finetune_steps=2).plan(model, graph, ctx)
    assert plan.meta["layer_finetune_steps"] == 2 and len(plan.kept) == 13
    assert len(plan.meta["thinet_finetune_loss"]) == 13  # one short fine-tune after each group
    first = next(gr for gr in graph.groups if gr.modules("out") == ["features.0"])
    removed = sorted(set(range(first.size)) - set(plan.kept[first.id].tolist()))
    kept = plan.kept[first.id]
    assert (model.features[0].weight[removed] == 0).all() and (model.features[1].weight[removed] == 0).all()
    assert (model.features[1].bias[removed] == 0).all() and (model.features[3].weight[:, removed] == 0).all()
    assert not torch.equal(model.features[0].weight[kept], w0[kept])  # the kept filters were trained
    model.eval()
    small = graph.apply(model, plan)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), small(x), atol=1e-5, rtol=1e-5)


def test_groups_go_input_side_first():
    ad = detprune.plugins().adapter("resnet56-cifar", width=0.125)
    model = ad.build()
    graph = trace(model, ad.example_inputs(1), protected=ad.protected(model))
    ordered = [g.modules("out")[0] for g in input_side_first(graph, graph.prunable_groups())]
    assert ordered[:3] == ["conv1", "layer1.0.conv1", "layer1.1.conv1"] and ordered[-1] == "layer3.8.conv1"


def test_fine_tuning_without_an_adapter_is_a_clear_error():
    model, x = build("simple_cnn")
    graph = trace(model, x)
    ctx = PruneContext(example_inputs=x, ratio=0.5, train_loader=[(x[0],)], graph=graph)
    with pytest.raises(
        detprune.errors.DetpruneError,
        match=r"^thinet: layer_finetune_steps > 0 needs the model adapter's loss \(ctx.adapter\)$",
    ):
        _pruner(layer_finetune_steps=1).plan(model, graph, ctx)

"""Every ``--shortcut`` mode of the slimming pruner yields a valid smaller model on real
architectures: ResNet-56 (option A's F.pad zero channels are fixed; option B's 1x1 shortcut) and a
small YOLOv3 (Darknet residual stages, concat routes, three heads)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detprune
from detprune.graph import trace
from detprune.plugin.context import PruneContext

MODELS = {
    "resnet56-A": ("resnet56-cifar", {"shortcut": "A"}),
    "resnet56-B": ("resnet56-cifar", {"shortcut": "B"}),
    "yolov3": ("yolov3", {"width": 0.25, "depth": 0.34, "img_size": 128}),
}


@pytest.fixture(scope="module", params=list(MODELS))
def dense(request):
    name, args = MODELS[request.param]
    adapter = detprune.plugins().adapter(name, **args)
    torch.manual_seed(0)
    model = adapter.build().eval()
    with torch.no_grad():  # a sparsity-trained look: many small |γ|, spread over layers
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) ** 4 * torch.sign(torch.randn(m.num_features)))
                m.bias.uniform_(-0.1, 0.1)
    x = adapter.example_inputs(1)
    graph = trace(model, x, protected=tuple(adapter.protected(model)))
    with torch.no_grad():
        out = model(*x)
    return request.param, model, graph, x, out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("mode", ["shared", "union", "sketch"])
def test_every_shortcut_mode_prunes_to_a_working_model(dense, mode):
    name, model, graph, x, ref = dense
    pruner = detprune.plugins().pruner("slimming", shortcut=mode)
    plan = pruner.plan(model, graph, PruneContext(ratio=0.5, round_to=2))
    small = graph.apply(model, plan)  # check=True: the engine runs the example inputs once
    with torch.no_grad():
        out = small(*x)
    out = out if isinstance(out, tuple) else (out,)
    assert [o.shape for o in out] == [r.shape for r in ref]
    assert all(torch.isfinite(o).all() for o in out)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert after < 0.8 * before, (name, mode, before, after)
    meta = plan.meta
    assert 0 < meta["achieved_ratio"] < 1 and meta["shortcut"] == mode
    for gid, kept in plan.kept.items():  # round_to=2 rounds each group's kept count up
        assert len(kept) % 2 == 0 or len(kept) == graph.group(gid).size
    residual = [g for g in graph.prunable_groups() if len(g.producers) > 1]
    assert residual, "these models have residual groups"
    if mode != "sketch":
        assert plan.widths == {}
        return
    for g in residual:  # each producer recorded with its own width; the group keeps c* = min of them
        widths = plan.widths[g.id]
        assert set(widths) == set(g.modules("out"))
        kept = plan.kept_count(g.id, g.size)
        n_fixed = int(g.fixed.sum())
        own_free = [w - int(g.fixed[s.channel].sum()) for s in g.producers for w in [widths[s.module]]]
        c_star = max(min(own_free), 1)
        assert kept - n_fixed >= c_star and kept - n_fixed - c_star < 2  # rounded up to round_to=2 at most
    assert any(len(set(w.values())) > 1 for w in plan.widths.values()), "producers disagree somewhere"


def test_union_keeps_at_least_what_shared_and_sketch_keep(dense):
    _, model, graph, _, _ = dense
    plans = {
        m: detprune.plugins().pruner("slimming", shortcut=m).plan(model, graph, PruneContext(ratio=0.5))
        for m in ("shared", "union", "sketch")
    }
    removed = {m: p.meta["channels_removed"] for m, p in plans.items()}
    assert removed["union"] <= removed["shared"] and removed["union"] <= removed["sketch"]
    assert len({p.meta["threshold"] for p in plans.values()}) == 1  # one global threshold for all modes

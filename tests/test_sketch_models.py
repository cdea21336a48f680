"""The ``sketch`` compensator on real architectures: ResNet-56 (option A and B shortcuts) and a
small YOLOv3, with Network Slimming plans in ``--shortcut sketch`` mode (per-producer widths)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detprune
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune_plugins.sketch.compensator import Sketch


def _build(name: str, **args):
    adapter = detprune.plugins().adapter(name, **args)
    torch.manual_seed(0)
    model = adapter.build().eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-looking BNs: spread |gamma| so a threshold means something
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.05)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    x = adapter.example_inputs(2)
    graph = trace(model, x, protected=adapter.protected(model))
    return adapter, model, x, graph


def _slimming_plan(model, graph, ratio=0.5):
    pruner = detprune.plugins().pruner("slimming", shortcut="sketch", min_keep=0.1)
    return pruner.plan(model, graph, PruneContext(ratio=ratio))


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _check_residual_widths(graph, plan, pruned) -> int:
    """Every producer of a multi-producer group ends at the group's common width c* (a producer
    that carries only part of the stream, as in option-A ResNets, at its share of it)."""
    checked = 0
    for gid in plan.widths:
        group, kept = graph.group(gid), plan.kept[gid]
        for slot in group.producers:
            width = pruned.get_submodule(slot.module).out_channels
            assert width == int(torch.isin(slot.channel, kept).sum()), slot.module
            if len(slot.index) == group.size:
                assert width == len(kept), slot.module
            checked += 1
    return checked


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet56_slimming_sketch_plan_runs_and_reconciles(shortcut):
    adapter, model, x, graph = _build("resnet56-cifar", shortcut=shortcut)
    plan = _slimming_plan(model, graph)
    assert plan.widths, "the sketch shortcut mode records per-producer widths"
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=0.3, mode="fd")
    comp.compensate(model, pruned, plan, PruneContext(graph=graph))
    out = pruned(*x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert _check_residual_widths(graph, plan, pruned) > 0
    residual = [e for e in comp.report["groups"] if "widths" in e]
    assert residual and all(e["rebased"] for e in residual if e["triggered"])
    for e in residual:  # a producer whose own ratio is under alpha is rebased for the shared basis
        group = graph.group(e["group"])
        n_pos = {s.module: len(s.index) for s in group.producers}
        own = {p: 1 - w / n_pos[p] for p, w in e["widths"].items()}
        assert e["shared_basis_only"] == sorted(p for p, r in own.items() if r <= 0.3)
        assert e["layer_ratio"] == pytest.approx(max(own.values()))


def test_resnet56_option_a_mixes_only_the_channels_every_stage_carries():
    """Option A pads the stream with zero channels: one group spans three stages; the padded
    channels are fixed, so only the 16 first-stage channels can be mixed."""
    adapter, model, x, graph = _build("resnet56-cifar", shortcut="A")
    stream = next(g for g in graph.prunable_groups() if "conv1" in g.modules("out"))
    assert stream.size == 64 and int(stream.fixed.sum()) == 48
    plan = PruningPlan({stream.id: torch.nonzero(stream.fixed).flatten().tolist() + [0, 1, 2, 3, 4, 5]})
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=0.3)
    comp.compensate(model, pruned, plan, PruneContext(graph=graph))
    (entry,) = comp.report["groups"]
    assert entry["ratio"] == pytest.approx(10 / 64) and entry["layer_ratio"] == pytest.approx(10 / 16)
    assert entry["rebased"] and entry["mixed"] == 16 and entry["sketch"] == 6
    assert pruned.conv1.out_channels == 6
    assert pruned.layer1[0].conv2.out_channels == 6
    assert pruned.layer2[0].conv2.out_channels == 16 + 6
    assert pruned.layer3[8].conv2.out_channels == 48 + 6
    assert pruned(*x).shape == (2, 10)


def test_resnet56_full_width_procrustes_is_the_identity():
    """The position bookkeeping on a real network: aligned lossless sketches change nothing."""
    adapter, model, x, graph = _build("resnet56-cifar", shortcut="A")
    plan = PruningPlan({g.id: torch.arange(g.size) for g in graph.prunable_groups()})
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=-1.0, variant="procrustes", mode="svd")
    comp.compensate(model, pruned, plan, PruneContext(graph=graph))
    assert len(comp.report["rebased"]) == len(plan.kept)
    torch.testing.assert_close(pruned(*x), model(*x), rtol=1e-3, atol=1e-4)


def _small_yolo():
    return _build("yolov3", width=0.125, depth=0.34, img_size=64, num_classes=3)


def test_yolov3_slimming_sketch_plan_runs_and_reconciles():
    adapter, model, x, graph = _small_yolo()
    plan = _slimming_plan(model, graph)
    assert plan.widths
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=0.3, mode="fd")
    comp.compensate(model, pruned, plan, PruneContext(graph=graph))
    outs = _outputs(pruned(*x))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 2, 2), (2, 24, 4, 4), (2, 24, 8, 8)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert _check_residual_widths(graph, plan, pruned) > 0
    assert comp.report["rebased"]


def test_yolov3_linearised_full_width_rebase_reproduces_the_output():
    """LeakyReLU -> Identity makes YOLOv3 linear (BN in eval mode is affine): a full-width rebase of
    every group (residual streams, route concats at offsets, upsampling) must give the same maps."""
    adapter, model, x, graph = _small_yolo()
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.LeakyReLU):
                setattr(m, child_name, nn.Identity())
    plan = PruningPlan({g.id: torch.arange(g.size) for g in graph.prunable_groups()})
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=-1.0, mode="fd")
    comp.compensate(model, pruned, plan, PruneContext(graph=graph))
    assert len(comp.report["rebased"]) == len(plan.kept)
    changed = sum(not torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), model.state_dict().values()))
    assert changed > len(plan.kept)  # the weights really were rotated
    for got, want in zip(_outputs(pruned(*x)), _outputs(model(*x))):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.detach().abs().max()))

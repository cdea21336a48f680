"""Every adapter's model through the channel-dependency engine (docs/internals.md section 1):
a 50 % prune keeps output shapes and cuts each producer by exactly the planned channels, the
keep-everything plan reproduces the outputs bit for bit, and YOLOv3's coupling matches the groups
SlimYOLOv3 derives by hand from the Darknet cfg (research/algorithms.md 7.1).

These tests skip until ``detprune.graph.trace`` exists.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detprune
from detprune.graph.plan import PruningPlan

graph_mod = pytest.importorskip("detprune.graph")
if not hasattr(graph_mod, "trace"):
    pytest.skip("the channel-dependency engine (detprune.graph.trace) has not landed", allow_module_level=True)
trace = graph_mod.trace

SMALL = {
    "vgg16-cifar": {"width": 0.25},
    "resnet56-cifar": {"width": 0.5},
    "resnet18": {"num_classes": 10, "img_size": 64},
    "resnet50": {"num_classes": 10, "img_size": 64},
    "yolov3": {"width": 0.125, "depth": 0.34, "img_size": 64},
    "centernet-resnet18": {"width": 0.125, "img_size": 64},
}


def _build(name):
    a = detprune.plugins().adapter(name, **SMALL[name])
    torch.manual_seed(0)
    model = a.build().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong slice shows in the outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return a, model


def _outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return out if isinstance(out, (tuple, list)) else (out,)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


@pytest.mark.parametrize("name", list(SMALL))
def test_keep_everything_plan_reproduces_outputs_exactly(name):
    a, model = _build(name)
    inputs = a.example_inputs(2)
    graph = trace(model, inputs, protected=tuple(a.protected(model)))
    same = graph.apply(model, PruningPlan({}))
    for u, v in zip(_outputs(model, *inputs), _outputs(same, *inputs)):
        assert torch.equal(u, v)


@pytest.mark.parametrize("name", list(SMALL))
def test_half_prune_keeps_output_shapes_and_cuts_as_planned(name):
    a, model = _build(name)
    inputs = a.example_inputs(2)
    protected = a.protected(model)
    graph = trace(model, inputs, protected=tuple(protected))
    groups = list(graph.prunable_groups())
    assert groups, f"{name}: no prunable group"
    plan = PruningPlan({g.id: _first_half_of_free_channels(g) for g in groups})
    removed: dict[str, int] = {}
    for g in groups:
        keep = plan.kept[g.id]
        for slot in g.producers:
            removed[slot.module] = removed.get(slot.module, 0) + int((~torch.isin(slot.channel, keep)).sum())
    pruned = graph.apply(model, plan)
    for mod, n in removed.items():
        assert _out_channels(pruned.get_submodule(mod)) == _out_channels(model.get_submodule(mod)) - n, mod
    for mod in protected:  # the model's outputs keep every channel
        assert _out_channels(pruned.get_submodule(mod)) == _out_channels(model.get_submodule(mod))
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    assert after < 0.75 * before  # exact per-module counts are checked above
    for u, v in zip(_outputs(model, *inputs), _outputs(pruned, *inputs)):
        assert u.shape == v.shape and torch.isfinite(v).all()
    if a.task == "detection":  # the pruned model still trains through the adapter's loss
        pruned.train()
        targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0]]), "labels": torch.tensor([2])}] * 2
        loss, _ = a.loss(pruned(*inputs), targets)
        loss.backward()


def _first_half_of_free_channels(group) -> torch.Tensor:
    """Keep every fixed channel (e.g. ResNet-56's F.pad zeros) and the first half of the others."""
    free = torch.nonzero(~group.fixed).flatten()
    return torch.cat([torch.nonzero(group.fixed).flatten(), free[: (free.numel() + 1) // 2]])


def _producers(group) -> set[int]:
    """Darknet layer numbers of a group's producer convs (``layers.<i>.conv``)."""
    return {int(s.module.split(".")[1]) for s in group.producers if s.module.endswith(".conv")}


def test_yolov3_coupling_matches_slimyolov3_hand_derived_groups():
    a = detprune.plugins().adapter("yolov3", width=0.0625, img_size=64)  # full depth: Darknet layer numbers
    model = a.build().eval()
    graph = trace(model, a.example_inputs(1), protected=tuple(a.protected(model)))
    by_producers = {frozenset(_producers(g)): g for g in graph.groups}
    residual = {
        64: {1, 3},
        128: {5, 7, 10},
        256: {12, 14, 17, 20, 23, 26, 29, 32, 35},
        512: {37, 39, 42, 45, 48, 51, 54, 57, 60},
        1024: {62, 64, 67, 70, 73},
    }
    for width, members in residual.items():
        g = by_producers.get(frozenset(members))
        assert g is not None, f"no group with producers {sorted(members)} (the {width}-wide shortcut chain)"
        assert g.size == width // 16 and g.prunable
    # every other BN conv is a group of its own
    chained = set().union(*residual.values())
    singles = [i for i, d in enumerate(model.defs) if d["type"] == "conv" and d["bn"] and i not in chained]
    for i in singles:
        assert frozenset({i}) in by_producers, f"conv {i} should be alone in its group"
    assert len(singles) + len(residual) == len(graph.prunable_groups())
    # routes concatenate: conv 87 reads [84 (upsampled) | the 512 chain], conv 99 reads [96 | the 256 chain]
    for consumer, first, chain in ((87, 84, 512), (99, 96, 256)):
        name = f"layers.{consumer}.conv"
        g_first = by_producers[frozenset({first})]
        g_chain = by_producers[frozenset(residual[chain])]
        (s_first,) = [s for s in g_first.consumers if s.module == name]
        (s_chain,) = [s for s in g_chain.consumers if s.module == name]
        n_first = model.get_submodule(f"layers.{first}.conv").out_channels
        assert s_first.index.tolist() == list(range(n_first))
        assert s_chain.index.tolist() == list(range(n_first, n_first + g_chain.size))
    # route -4 (layers 83, 95): conv 79's channels feed both conv 80 and conv 84
    g79 = by_producers[frozenset({79})]
    assert {"layers.80.conv", "layers.84.conv"} <= {s.module for s in g79.consumers}
    # the output convs are never pruned
    for name in a.protected(model):
        i = int(name.split(".")[1])
        assert not by_producers[frozenset({i})].prunable

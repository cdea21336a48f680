"""Physical pruning is provably harmless on every coupling pattern of tests/zoo.py.

* keep-everything plan: outputs bit-identical to the dense model;
* zero exactly the channels a plan removes, then prune them: outputs equal within 1e-10 (float64);
* producers lose exactly the planned channels, output shapes never change, params drop.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import GraphError
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from zoo import (
    NOT_EXACT_AFTER_ZEROING,
    TOYS,
    build,
    out_channels,
    removed_per_producer,
    run,
    zero_removed,
)


def _l1_plan(model, graph, ratio=0.4, **kw):
    crit = detprune.plugins().criterion("l1")
    return graph.plan({g.id: crit.score(model, g) for g in graph.prunable_groups()}, ratio, **kw)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_keep_everything_plan_is_bit_identical(name):
    model, x = build(name)
    graph = trace(model, x)
    same = graph.apply(model, PruningPlan({}))
    assert same is not model
    for u, v in zip(run(model, x), run(same, x)):
        assert torch.equal(u, v)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_pruning_zeroed_channels_changes_nothing(name):
    model, x = build(name)
    graph = trace(model, x)
    plan = _l1_plan(model, graph)
    assert plan.kept, f"{name}: nothing was pruned"
    zeroed = copy.deepcopy(model)
    zero_removed(zeroed, graph, plan)
    pruned = graph.apply(zeroed, plan)
    ref, got = run(zeroed, x), run(pruned, x)
    assert [t.shape for t in ref] == [t.shape for t in got]
    tol = 1e-1 if name in NOT_EXACT_AFTER_ZEROING else 1e-10
    for u, v in zip(ref, got):
        assert (u - v).abs().max().item() <= tol * max(1.0, u.abs().max().item())
    for module, n in removed_per_producer(graph, plan).items():
        assert out_channels(pruned.get_submodule(module)) == out_channels(model.get_submodule(module)) - n
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_grouped_conv_keeps_groups_and_equal_counts():
    model, x = build("grouped_gn")
    graph = trace(model, x)
    plan = _l1_plan(model, graph, ratio=0.5)
    pruned = graph.apply(model, plan)
    b = pruned.b
    assert b.groups == 4 and b.weight.shape == (12, 2, 3, 3) and (b.in_channels, b.out_channels) == (8, 12)
    assert pruned.gn.num_groups == 4 and pruned.gn.num_channels == 12
    assert pruned.gn_pc.num_groups == pruned.gn_pc.num_channels == 6  # per-channel GroupNorm shrinks its groups


def test_depthwise_multiplier_and_attributes():
    model, x = build("mobile_se")
    graph = trace(model, x)
    g = next(g for g in graph.groups if "stem.0" in g.modules("out"))
    plan = PruningPlan({g.id: torch.tensor([0, 2, 4, 6])})
    pruned = graph.apply(model, plan)
    assert (pruned.mult[0].in_channels, pruned.mult[0].out_channels, pruned.mult[0].groups) == (4, 8, 4)
    assert pruned.blocks[0].project[0].out_channels == 4 and pruned.stem[1].num_features == 4
    assert pruned.head.in_channels == 8


def test_chunk_pieces_keep_equal_counts():
    model, x = build("yolo_c2f_spp")
    graph = trace(model, x)
    g = next(g for g in graph.groups if "c2f.cv1.0" in g.modules("out"))
    what, blocks = g.blocks[0]
    assert "chunk" in what and [len(b) for b in blocks] == [16, 16]
    with pytest.raises(
        GraphError, match=r"plan keeps \[16, 15\] channels in the blocks of the 2 equal pieces of 'chunk'"
    ):
        graph.apply(model, PruningPlan({g.id: torch.arange(31)}))
    plan = _l1_plan(model, graph, ratio=0.5)
    pruned = graph.apply(model, plan)
    assert pruned.c2f.cv1[0].out_channels == 16 and pruned.c2f.c == 16  # the attribute stays; chunk follows the data


def test_inplace_prunes_the_given_model():
    model, x = build("tiny_resnet")
    graph = trace(model, x)
    plan = _l1_plan(model, graph)
    before = sum(p.numel() for p in model.parameters())
    out = graph.apply(model, plan, inplace=True)
    assert out is model and sum(p.numel() for p in model.parameters()) < before


def test_broken_surgery_is_bisected_to_the_group_and_module():
    """A model whose forward hard-codes a width: the check names the group and the module."""

    class HardCoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.b(self.a(x))
            return self.c(y.reshape(y.shape[0], 8, 16).reshape(y.shape))  # 8 channels of 4x4 written in the code

    model = HardCoded().eval()
    x = torch.randn(1, 3, 4, 4)
    graph = trace(model, x)
    gid_a = next(g.id for g in graph.groups if g.modules("out") == ["a"])
    gid_b = next(g.id for g in graph.groups if g.modules("out") == ["b"])
    plan = PruningPlan({gid_a: torch.arange(6), gid_b: torch.arange(6)})
    with pytest.raises(
        GraphError, match=rf"pruning group {gid_b} \(size 8, producers b\) breaks the forward pass: RuntimeError"
    ):
        graph.apply(model, plan)


def test_invalid_plans_are_refused_with_the_group_named():
    model, x = build("pad_shortcut")
    graph = trace(model, x)
    out = next(g for g in graph.groups if "fc" in g.modules("out"))
    with pytest.raises(
        GraphError, match=rf"plan prunes group {out.id}, which cannot be pruned: reaches model output 0"
    ):
        graph.apply(model, PruningPlan({out.id: torch.tensor([0])}))
    with pytest.raises(GraphError, match=r"plan names group 999"):
        graph.apply(model, PruningPlan({999: torch.tensor([0])}))
    stream = next(g for g in graph.groups if "conv2" in g.modules("out"))
    assert int(stream.fixed.sum()) == 8  # the 8 zero-padded channels
    pad = int(stream.fixed.nonzero()[0])
    keep = torch.tensor([c for c in range(stream.size) if c != pad])
    with pytest.raises(
        GraphError,
        match=rf"plan removes channel {pad} of group {stream.id}, which must stay: "
        r"zero channels added by F.pad in the model's forward",
    ):
        graph.apply(model, PruningPlan({stream.id: keep}))


def test_clone_is_a_deep_copy_that_keeps_ties_hooks_and_attributes():
    from detprune.graph.clone import clone

    model, x = build("layer_scale_shared")
    model.extra = {"routes": [1, 2]}
    model.tied = model.conv  # the same module under two names
    model.register_forward_hook(lambda m, a, o: None)
    copy_ = clone(model)
    assert all(torch.equal(u, v) for u, v in zip(run(model, x), run(copy_, x)))
    assert copy_.tied is copy_.conv and copy_.conv is not model.conv
    assert copy_.conv.weight.data_ptr() != model.conv.weight.data_ptr()
    copy_.extra["routes"].append(3)
    assert model.extra == {"routes": [1, 2]} and len(copy_._forward_hooks) == 1
    with torch.no_grad():
        copy_.gamma.zero_()
    assert model.gamma.abs().sum() > 0

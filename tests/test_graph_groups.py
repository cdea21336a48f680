"""The groups the engine finds: exact coupling on each pattern, fixed channels with reasons,
protected modules, leaves, clear errors, deterministic ids."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detprune.errors import GraphError
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from zoo import build, run


def _by_producers(graph):
    return {frozenset(g.modules("out")): g for g in graph.groups}


def _slot(group, module, role):
    (s,) = [s for s in group.slots if s.module == module and s.role == role]
    return s


def test_residual_streams_couple_every_producer_of_a_stage():
    model, x = build("tiny_resnet")
    graph = trace(model, x)
    groups = _by_producers(graph)
    s1 = groups[frozenset({"stem.0", "layer1.0.conv2", "layer1.1.conv2"})]
    s2 = groups[frozenset({"layer2.0.conv2", "layer2.0.down.0", "layer2.1.conv2"})]
    assert s1.size == 8 and s2.size == 16 and s1.prunable and s2.prunable
    assert set(s1.modules("in")) == {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.down.0"}
    assert set(s1.modules("through")) == {"stem.1", "layer1.0.bn2", "layer1.1.bn2"}
    assert set(s2.modules("in")) == {"layer2.1.conv1", "fc"}
    for s in s1.slots:  # every member sees the stream's channels in the same order
        assert s.index.tolist() == list(range(8)) and s.channel.tolist() == list(range(8))
    singles = [g for g in graph.prunable_groups() if len(g.producers) == 1]
    assert {g.modules("out")[0] for g in singles} == {
        "layer1.0.conv1",
        "layer1.1.conv1",
        "layer2.0.conv1",
        "layer2.1.conv1",
    }


def test_concat_consumers_see_each_group_at_its_offset():
    model, x = build("inception")
    graph = trace(model, x)
    groups = _by_producers(graph)
    offsets = {"b1.0": range(0, 4), "b2.1.0": range(4, 10), "b3.1.0": range(10, 14), "b4.1.0": range(14, 18)}
    for producer, where in offsets.items():
        s = _slot(groups[frozenset({producer})], "out", "in")
        assert s.index.tolist() == list(where)
    stem = groups[frozenset({"stem.0"})]
    assert {"b1.0", "b2.0.0", "b3.0.0", "b4.1.0"} <= set(stem.modules("in"))


def test_dense_concat_splits_the_transition_bn_between_groups():
    model, x = build("dense_cat")
    graph = trace(model, x)
    groups = _by_producers(graph)
    assert [groups[frozenset({p})].size for p in ("stem", "layers.0.2", "layers.1.2", "layers.2.2")] == [8, 4, 4, 4]
    bn = [_slot(groups[frozenset({p})], "trans.0", "through").index.tolist() for p in ("layers.0.2", "layers.2.2")]
    assert bn == [list(range(8, 12)), list(range(16, 20))]


def test_flatten_before_linear_repeats_each_channel_per_pixel():
    model, x = build("flatten_mlp")
    graph = trace(model, x)
    g = _by_producers(graph)[frozenset({"conv"})]
    s = _slot(g, "fc1", "in")
    assert s.index.tolist() == list(range(96))
    assert s.channel.tolist() == torch.arange(6).repeat_interleave(16).tolist()
    fc1 = _by_producers(graph)[frozenset({"fc1"})]
    assert set(fc1.modules("through")) == {"bn1", "act"} and fc1.prunable


def test_channel_shuffle_unions_the_shuffled_halves():
    model, x = build("shuffle")
    graph = trace(model, x)
    stream = next(g for g in graph.groups if "stem.0" in g.modules("out"))
    # unit 0: x1 (stem channels 0..7) and branch output j become one class; the shuffle interleaves them
    assert _slot(stream, "units.0.branch.3.0", "out").channel.tolist() == list(range(8))
    consumer = _slot(stream, "units.1.branch.0.0", "in")  # unit 1 reads the second half of the shuffled stream
    assert consumer.channel.tolist() == [4, 4, 5, 5, 6, 6, 7, 7]
    assert any("chunk" in what for what, _ in stream.blocks)


def test_depthwise_and_se_gate_join_the_expansion_group():
    model, x = build("mobile_se")
    graph = trace(model, x)
    g = next(g for g in graph.groups if "blocks.0.expand.0" in g.modules("out"))
    assert set(g.modules("out")) == {"blocks.0.expand.0", "blocks.0.fc2"}  # SE gate multiplies the channels
    assert {"blocks.0.dw.0", "blocks.0.dw.1", "blocks.0.expand.1"} == set(g.modules("through"))
    mult = _slot(next(g for g in graph.groups if "stem.0" in g.modules("out")), "mult.0", "through")
    assert mult.channel.tolist() == torch.arange(8).repeat_interleave(2).tolist()


def test_conv_transpose_and_three_heads():
    model, x = build("deconv_heads")
    graph = trace(model, x)
    g = _by_producers(graph)[frozenset({"deconv.0"})]
    assert set(g.modules("in")) == {"hm.0", "wh.0", "reg.0"} and g.prunable
    for head in ("hm.2", "wh.2", "reg.2"):
        out = _by_producers(graph)[frozenset({head})]
        assert not out.prunable and out.reason.startswith("reaches model output")


def test_fixed_sizes_and_slices_fix_exactly_the_channels_they_cut():
    model, x = build("fixed_split")
    graph = trace(model, x)
    g = _by_producers(graph)[frozenset({"a.0", "c.0"})]  # q + c(x)[:, :4] joins a's last 4 with c's first 4
    assert g.size == 12 + 10 - 4 and g.prunable
    free = [c for c in range(g.size) if not g.fixed[c]]
    c_out = _slot(g, "c.0", "out")
    assert sorted(free) == sorted(c_out.channel[4:].tolist())  # only c's channels 4..9 may go
    assert any("'split' into fixed sizes [8, 4]" in r for r in g.fixed_reasons)
    assert any("'getitem' takes channels at fixed positions" in r for r in g.fixed_reasons)


def test_layer_scale_parameter_and_shared_module():
    model, x = build("layer_scale_shared")
    graph = trace(model, x)
    g = next(g for g in graph.groups if "conv" in g.modules("out"))
    assert set(g.modules("out")) == {"conv", "shared"}  # a module called twice has one set of filters
    (scale,) = [s for s in g.throughs if s.param == "gamma"]
    assert scale.index.tolist() == list(range(8))
    plan = PruningPlan({g.id: torch.tensor([1, 3, 5])})
    pruned = graph.apply(model, plan)
    assert pruned.gamma.shape == (3,) and pruned.shared.weight.shape == (3, 3, 3, 3)


def test_protected_modules_and_unknown_names():
    model, x = build("yolo_c2f_spp")
    graph = trace(model, x, protected=("fuse",))
    g = _by_producers(graph)[frozenset({"fuse.0"})]
    assert not g.prunable and g.reason == "protected: fuse"
    with pytest.raises(GraphError, match=r"protected module 'nope' is not in the model"):
        trace(model, x, protected=("nope",))


class Gram(nn.Module):
    def forward(self, y):
        f = y.flatten(2)
        return torch.matmul(f, f.transpose(1, 2)).flatten(1)  # channel x channel: no per-channel map


class GramNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.gram = Gram()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.gram(self.conv2(torch.relu(self.conv(x)))))


def test_unknown_op_names_op_and_module_and_the_leaf_way_out():
    model, x = GramNet().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(
        GraphError,
        match=(
            r"cannot follow channels through 'matmul' in module 'gram': no rule maps its "
            r"channels \(got tensor\[2, 4, 64\], tensor\[2, 64, 4\]\)\. Mark that module as a "
            r"leaf to keep its channels: trace\(\.\.\., leaves=\('gram',\)\)"
        ),
    ):
        trace(model, x)
    graph = trace(model, x, leaves=("gram",))
    conv2 = _by_producers(graph)[frozenset({"conv2"})]
    assert not conv2.prunable and conv2.reason == "input of leaf module 'gram'"
    conv = _by_producers(graph)[frozenset({"conv"})]
    pruned = graph.apply(model, PruningPlan({conv.id: torch.tensor([0, 3])}))
    assert pruned.conv2.in_channels == 2 and run(pruned, (x,))[0].shape == (2, 2)
    with pytest.raises(GraphError, match=r"leaf module 'nope' is not in the model"):
        trace(model, x, leaves=("nope",))


def test_ids_and_fingerprint_are_deterministic():
    model, x = build("yolo_c2f_spp")
    a, b = trace(model, x), trace(model, x)
    assert a.fingerprint() == b.fingerprint()
    assert [(g.size, g.modules()) for g in a.groups] == [(g.size, g.modules()) for g in b.groups]
    other, y = build("tiny_resnet")
    assert trace(other, y).fingerprint() != a.fingerprint()


def test_every_position_of_every_module_axis_is_covered_once():
    model, x = build("dense_cat")
    graph = trace(model, x)
    for rec in graph.records.values():
        for role, ids in (("out", rec.out), ("in", rec.inp), ("through", rec.through)):
            if ids is None:
                continue
            seen = sorted(
                i
                for g in graph.groups
                for s in g.slots
                if s.module == rec.name and s.role == role
                for i in s.index.tolist()
            )
            assert seen == list(range(len(ids))), (rec.name, role)


def test_rows_and_reduce_per_role():
    model, x = build("grouped_gn")
    graph = trace(model, x)
    g = _by_producers(graph)[frozenset({"b"})]  # grouped conv b: [24, 4, 3, 3], 4 groups
    out = g.rows(model, _slot(g, "b", "out"))
    assert out.shape == (24, 36) and torch.equal(out[5], model.b.weight[5].flatten())
    gn = g.rows(model, _slot(g, "gn", "through"))
    assert gn.shape == (24, 1) and torch.equal(gn[:, 0], model.gn.weight)
    a = _by_producers(graph)[frozenset({"a.0"})]
    rows_in = a.rows(model, _slot(a, "b", "in"))  # input channel i of group j: b.weight[6j:6j+6, i % 4]
    assert rows_in.shape == (16, 54) and torch.equal(rows_in[5], model.b.weight[6:12, 1].flatten())
    l1 = g.reduce(model, lambda r: r.abs().sum(1))
    assert torch.allclose(l1, model.b.weight.abs().sum((1, 2, 3)).float())
    assert torch.equal(g.reduce(model, lambda r: r.sum(1), types=nn.Linear), torch.zeros(24))
    assert graph.kept_index(PruningPlan({g.id: torch.arange(0, 24, 2)}), "b", "out").tolist() == list(range(0, 24, 2))


class MadeInside(nn.Module):
    """The backbone reads a tensor built inside forward (as detection transforms do)."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        batched = x.new_zeros(x.shape[0], 3, 8, 8)
        batched[:, :, :4, :4].copy_(x[:, :, :4, :4])
        return self.conv2(torch.relu(self.conv(batched)))


def test_layers_on_tensors_made_inside_forward_are_followed():
    model, x = MadeInside().eval(), torch.randn(2, 3, 8, 8)
    graph = trace(model, x)
    conv = _by_producers(graph)[frozenset({"conv"})]
    assert conv.prunable and conv.modules("in") == ["conv2"]
    pruned = graph.apply(model, PruningPlan({conv.id: torch.tensor([1, 4])}))
    assert pruned.conv.out_channels == 2 and run(pruned, (x,))[0].shape == (2, 2, 8, 8)


def test_trace_runs_in_eval_mode_and_restores_each_modules_flag():
    model, x = build("tiny_resnet")
    model.train()
    model.layer1[0].bn1.eval()  # a frozen BN inside a training model
    before = model.layer2[0].bn1.running_mean.clone()
    trace(model, x)
    assert model.training and model.layer2[0].bn1.training and not model.layer1[0].bn1.training
    assert torch.equal(model.layer2[0].bn1.running_mean, before)  # the trace did not update BN statistics


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_scripted_submodules_are_leaves():
    model, x = build("simple_cnn")
    model.features[2] = torch.jit.script(model.features[2])
    graph = trace(model, x)
    g = next(g for g in graph.groups if "features.1.0" in g.modules("out"))
    assert not g.prunable and g.reason == "input of leaf module 'features.2'"

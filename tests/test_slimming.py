"""Network Slimming (plugins/slimming/pruner.py): the sparsity sub-gradient, the global threshold, the
per-layer floor, rounding, and the three ``--shortcut`` modes on hand-made models whose outcome is
worked out by hand (research/algorithms.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune_plugins.slimming.threshold import global_threshold


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    """stem and b1 are summed (one residual group of 8), mid is a plain group of 6, head is the output."""

    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.mid = cbr(3, 8), cbr(8, 8), cbr(8, 6)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        a = self.stem(x)
        return self.head(self.mid(a + self.b1(a)))


# hand-picked |γ|; 22 values, the 10 smallest are <= 0.07 and nothing else sits near 0.07
STEM = [0.12, 0.9, 0.01, 0.2, 0.5, 0.03, 0.6, 0.04]
B1 = [0.01, 0.02, 0.9, 0.8, 0.03, 0.5, 0.04, 0.61]
MID = [0.05, 0.7, 0.06, 0.8, 0.07, 0.9]


def residual_model():
    torch.manual_seed(0)
    m = Residual().eval()
    with torch.no_grad():
        for bn, g in ((m.stem[1], STEM), (m.b1[1], B1), (m.mid[1], MID)):
            bn.weight.copy_(torch.tensor(g) * torch.tensor([1, -1] * (len(g) // 2)))  # sign must not matter
    x = torch.rand(2, 3, 8, 8)
    return m, trace(m, (x,)), x


def gid_of(graph, module):
    return next(g.id for g in graph.groups if module in g.modules("out"))


def slimming(**kw):
    return detprune.plugins().pruner("slimming", **kw)


def test_threshold_removes_exactly_round_n_times_ratio():
    v = torch.tensor([0.5, 0.1, 0.4, 0.3, 0.2, 0.6, 0.9, 0.8, 0.7, 1.0])
    assert global_threshold(v, 0.3) == pytest.approx(0.3)  # .1 .2 .3 go: exactly 3 of 10
    assert global_threshold(v, 0.34) == pytest.approx(0.3)
    assert global_threshold(v, 0.0) is None
    assert global_threshold(v, 0.04) is None  # round(0.4) = 0 channels


@pytest.mark.parametrize(
    "mode,kept_res,widths",
    [
        ("union", list(range(8)), None),  # OR-merge: every channel has one producer above t
        ("shared", [1, 2, 3, 4, 5, 6, 7], None),  # mean |γ| of channel 0 = .065 <= .07
        ("sketch", [1, 2, 3, 7], {"stem.0": 5, "b1.0": 4}),  # c* = min(5, 4), top 4 by summed |γ|
    ],
)
def test_each_shortcut_mode_answers_the_global_threshold_as_worked_out_by_hand(mode, kept_res, widths):
    m, graph, _ = residual_model()
    plan = slimming(shortcut=mode, min_keep=0.0).plan(m, graph, PruneContext(ratio=0.45))
    res, mid = gid_of(graph, "stem.0"), gid_of(graph, "mid.0")
    assert plan.meta["threshold"] == pytest.approx(0.07)  # round(22 * 0.45) = 10 smallest |γ| are <= .07
    assert plan.kept.get(res, torch.arange(8)).tolist() == kept_res
    assert plan.kept[mid].tolist() == [1, 3, 5]
    assert plan.widths.get(res) == widths
    removed = 2 * (8 - len(kept_res)) + 3
    assert plan.meta["channels"] == 22 and plan.meta["channels_removed"] == removed
    assert plan.meta["achieved_ratio"] == pytest.approx(removed / 22)
    assert plan.meta["asked_ratio"] == 0.45 and plan.meta["shortcut"] == mode and plan.meta["floor_hits"] == []


def test_sketch_mean_width_and_context_override():
    m, graph, _ = residual_model()
    ctx = PruneContext(ratio=0.45, options={"shortcut": "sketch", "shortcut_width": "mean"})
    plan = slimming(shortcut="union", min_keep=0.0).plan(m, graph, ctx)
    assert plan.kept[gid_of(graph, "stem.0")].tolist() == [1, 2, 3, 6, 7]  # round(mean(5, 4)) = 5
    assert plan.meta["shortcut"] == "sketch" and plan.meta["shortcut_width"] == "mean"


def test_per_layer_floor_keeps_top_gamma_and_is_reported():
    m, graph, x = residual_model()
    with torch.no_grad():
        m.mid[1].weight.copy_(torch.tensor([1e-4, 3e-3, 2e-4, 1e-3, 5e-4, 2e-3]))  # the whole layer under t
    plan = slimming(min_keep=0.3).plan(m, graph, PruneContext(ratio=0.45))
    mid = gid_of(graph, "mid.0")
    assert plan.kept[mid].tolist() == [1, 5]  # ceil(0.3 * 6) = 2 channels, the largest |γ|
    assert plan.meta["floor_hits"] == ["mid.0"]
    out = graph.apply(m, plan)(x)
    assert out.shape == m(x).shape
    # min_keep=0 still keeps one channel per layer (the largest |γ|), and says so
    bare = slimming(min_keep=0.0).plan(m, graph, PruneContext(ratio=0.45))
    assert bare.kept[mid].tolist() == [1] and bare.meta["floor_hits"] == ["mid.0"]


def test_round_to_rounds_each_kept_width_up():
    m, graph, _ = residual_model()
    plan = slimming(shortcut="shared", min_keep=0.0).plan(m, graph, PruneContext(ratio=0.45, round_to=4))
    assert len(plan.kept[gid_of(graph, "mid.0")]) == 4  # 3 above t, rounded up to 4
    assert gid_of(graph, "stem.0") not in plan.kept  # 7 rounds up to 8: nothing removed


def test_no_removal_at_ratio_zero_and_clear_option_errors():
    m, graph, _ = residual_model()
    plan = slimming().plan(m, graph, PruneContext(ratio=0.0))
    assert plan.kept == {} and plan.meta["achieved_ratio"] == 0.0 and plan.meta["threshold"] is None
    with pytest.raises(DetpruneError, match=r"^slimming: shortcut must be one of shared, union, sketch, got 'or'$"):
        slimming(shortcut="or")
    with pytest.raises(DetpruneError, match=r"^slimming: shortcut_width must be one of min, mean, got 'max'$"):
        slimming(shortcut_width="max")
    with pytest.raises(DetpruneError, match=r"^slimming: s \(the sparsity strength\) must be a number >= 0, got -1$"):
        slimming(s=-1)
    with pytest.raises(DetpruneError, match=r"^slimming: min_keep must be a fraction in \[0, 1\], got 2$"):
        slimming(min_keep=2)
    with pytest.raises(
        DetpruneError, match=r"ratio is the fraction of channels removed and must be in \[0, 1\), got 1.0"
    ):
        slimming().plan(m, graph, PruneContext(ratio=1.0))


def test_model_without_prunable_batchnorm_is_a_clear_error():
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = trace(m, (torch.rand(1, 3, 4, 4),))
    with pytest.raises(DetpruneError, match="no BatchNorm sits in a prunable channel group"):
        slimming().plan(m, graph, PruneContext(ratio=0.5))


def test_bn_scale_criterion_sums_abs_gamma_over_the_group():
    m, graph, _ = residual_model()
    crit = detprune.plugins().criterion("bn-scale")
    res = graph.group(gid_of(graph, "stem.0"))
    expected = torch.tensor(STEM) + torch.tensor(B1)
    assert torch.allclose(crit.score(m, res, None), expected)


# ---- the sparsity sub-gradient --------------------------------------------------------------------
class WithOutputBN(nn.Module):
    """mid is prunable; the last BN feeds the model output, so it is not; b1's BN is frozen."""

    def __init__(self):
        super().__init__()
        self.stem, self.b1, self.mid = cbr(3, 8), cbr(8, 8), cbr(8, 6)
        self.out = nn.Sequential(nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x):
        a = self.stem(x)
        return self.out(self.mid(a + self.b1(a))).mean((2, 3))


def test_sparsity_term_adds_exactly_s_sign_gamma_to_prunable_bns_only():
    torch.manual_seed(0)
    m = WithOutputBN()
    with torch.no_grad():
        for bn in (m.stem[1], m.b1[1], m.mid[1], m.out[1]):
            bn.weight.uniform_(-1, 1)
        m.mid[1].weight[2] = 0.0  # sign(0) = 0: no push
    m.b1[1].weight.requires_grad_(False)
    x = torch.rand(2, 3, 8, 8)
    graph = trace(m, (x,), protected=("stem",))
    pruner = slimming(s=1e-3).attach(graph)
    m(x).sum().backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    pruner.on_after_backward(m)
    after = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert m.b1[1].weight.grad is None  # skipped, no error
    w = m.mid[1].weight
    assert torch.equal(after["mid.1.weight"], before["mid.1.weight"] + 1e-3 * torch.sign(w.detach()))
    assert after["mid.1.weight"][2] == before["mid.1.weight"][2]
    for name in before:
        if name != "mid.1.weight":  # protected stem group, the output BN, every other parameter
            assert torch.equal(after[name], before[name]), name


def test_without_a_graph_the_sparsity_term_falls_back_to_every_affine_bn(caplog):
    torch.manual_seed(0)
    m = WithOutputBN()
    x = torch.rand(2, 3, 8, 8)
    m(x).sum().backward()
    before = m.out[1].weight.grad.clone()
    pruner = slimming(s=0.5)
    with caplog.at_level("WARNING", logger="detprune.slimming"):
        pruner.on_after_backward(m)
    assert "no channel graph (pruner.attach(graph) or pruner.bind(ctx))" in caplog.text
    assert torch.equal(m.out[1].weight.grad, before + 0.5 * torch.sign(m.out[1].weight.detach()))


def test_first_batch_traces_the_model_when_no_graph_was_attached():
    torch.manual_seed(0)
    m = WithOutputBN()
    x = torch.rand(2, 3, 8, 8)
    pruner = slimming(s=0.5)
    assert pruner.loss_term(m, None, (x, torch.zeros(2))) == 0.0
    assert pruner.graph is not None and m.training  # traced in eval mode, training mode restored
    m(x).sum().backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    pruner.on_after_backward(m)
    assert torch.equal(m.out[1].weight.grad, before["out.1.weight"])  # its group reaches the output
    for name in ("stem.1.weight", "b1.1.weight", "mid.1.weight"):
        w = m.get_parameter(name).detach()
        assert torch.equal(m.get_parameter(name).grad, before[name] + 0.5 * torch.sign(w)), name


def test_bound_context_traces_with_the_adapters_protected_layers():
    class Adapter:
        def protected(self, model):
            return ["mid"]

    torch.manual_seed(0)
    m = WithOutputBN()
    x = torch.rand(2, 3, 8, 8)
    pruner = slimming(s=0.5).bind(PruneContext(example_inputs=(x,), ratio=0.3, adapter=Adapter()))
    assert pruner.ratio == 0.3
    m(x).sum().backward()
    before = {n: p.grad.clone() for n, p in m.named_parameters()}
    pruner.on_after_backward(m)
    for name in ("mid.1.weight", "out.1.weight"):  # protected by the adapter / reaches the output
        assert torch.equal(m.get_parameter(name).grad, before[name]), name
    w = m.stem[1].weight.detach()
    assert torch.equal(m.stem[1].weight.grad, before["stem.1.weight"] + 0.5 * torch.sign(w))


def test_resnet56_option_a_pad_channels_are_neither_penalised_nor_counted():
    a = detprune.plugins().adapter("resnet56-cifar", shortcut="A")
    m = a.build()
    x = a.example_inputs(2)
    graph = trace(m, x, protected=tuple(a.protected(m)))
    pruner = slimming(s=1e-2).attach(graph)
    m.train()
    a.loss(m(*x), torch.tensor([1, 2]))[0].backward()
    bn = m.layer2[0].bn2  # 32 positions: 16 carry stage-1 channels (free), 16 pair with F.pad zeros (fixed)
    before = bn.weight.grad.clone()
    pruner.on_after_backward(m)
    delta = bn.weight.grad - before
    fixed_pos = torch.tensor([i for i in range(32) if not 8 <= i < 24])
    assert torch.equal(delta[fixed_pos], torch.zeros(16))
    assert torch.allclose(delta[8:24], 1e-2 * torch.sign(bn.weight.detach()[8:24]))
    plan = slimming().plan(m, graph, PruneContext(ratio=0.5))
    assert (
        plan.meta["channels"]
        == sum(bn.num_features for bn in m.modules() if isinstance(bn, nn.BatchNorm2d)) - 16 * 9 - 48 * 9
    )  # stage-2 and stage-3 stream BNs lose their fixed positions from the count

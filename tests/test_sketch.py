"""The ``sketch`` compensator on small hand-made networks (research/algorithms.md 6.4-6.6)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune_plugins.sketch.compensator import Sketch, SketchOptionError
from detprune_plugins.sketch.frequent_directions import sketch as fd_sketch


class Toy(nn.Module):
    """conv-BN chain with a residual add, a concat consumer and a flatten->Linear head.

    ``act=False`` makes it linear (BN in eval mode is affine): the regime where a rebase is exact.
    """

    def __init__(self, act: bool = False, bn: bool = True) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.c1, self.b1 = nn.Conv2d(3, 12, 3, padding=1, bias=not bn), norm(12)
        self.c2, self.b2 = nn.Conv2d(12, 10, 3, padding=1), norm(10)
        self.c3, self.b3 = nn.Conv2d(10, 12, 1, bias=False), norm(12)
        self.c4 = nn.Conv2d(22, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU() if act else nn.Identity()
        self.head = nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        a = self.act(self.b1(self.c1(x)))
        b = self.act(self.b2(self.c2(a)))
        c = self.b3(self.c3(b)) + a  # residual group {c1, c3}
        d = self.act(self.c4(torch.cat([c, b], 1)))  # concat: two groups at offsets
        return self.head(torch.flatten(d, 1))  # each c4 channel appears 4 times


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def _setup(act=False, bn=True, seed=0):
    torch.manual_seed(seed)
    model = _randomise_bn(Toy(act, bn), seed)
    x = torch.randn(4, 3, 4, 4)
    graph = trace(model, (x,))
    return model, x, graph


def _groups(graph):
    """{producer tuple: group} for the three prunable groups of Toy."""
    return {tuple(g.modules("out")): g for g in graph.prunable_groups()}


def _plan(graph, keep: dict[tuple[str, ...], int]) -> PruningPlan:
    gs = _groups(graph)
    return PruningPlan({gs[k].id: torch.arange(n) * (gs[k].size // n) for k, n in keep.items()})


def _compensate(model, graph, plan, **opts):
    pruned = graph.apply(model, plan)
    comp = Sketch(**opts)
    comp.compensate(model, pruned, plan, PruneContext(graph=graph))
    return pruned, comp


def test_groups_at_or_under_alpha_stay_bit_identical():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c1", "c3"): 9, ("c2",): 8})  # ratios 0.25 and 0.2
    pruned, comp = _compensate(model, graph, plan, alpha=0.3)
    reference = graph.apply(model, plan)
    for (k, v), (k2, v2) in zip(pruned.state_dict().items(), reference.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert comp.report["rebased"] == []
    reasons = sorted(e["reason"] for e in comp.report["groups"])
    assert reasons == ["prune ratio 0.200 <= alpha 0.3", "prune ratio 0.250 <= alpha 0.3"]


def test_only_modules_of_rebased_groups_change():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c1", "c3"): 4, ("c2",): 8})  # 0.667 > alpha, 0.2 <= alpha
    pruned, comp = _compensate(model, graph, plan, alpha=0.3)
    reference = graph.apply(model, plan)
    rebased = {m for e in comp.report["groups"] if e["rebased"] for m in e["producers"]}
    assert rebased == {"c1", "c3"}
    # the c2 group keeps its selected filters; c2's input side (group {c1,c3}) is mixed by Q^+
    assert not torch.equal(pruned.c2.weight, reference.c2.weight)
    torch.testing.assert_close(pruned.b2.running_mean, reference.b2.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(pruned.head.weight, reference.head.weight, rtol=0, atol=0)
    # c4 reads [c | b]: only the c-slice (first 4 inputs) is mixed, the b-slice stays selected
    assert torch.equal(pruned.c4.weight[:, 4:], reference.c4.weight[:, 4:])
    assert not torch.equal(pruned.c4.weight[:, :4], reference.c4.weight[:, :4])


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("mode", ["svd", "fd"])
def test_full_width_rebase_reproduces_a_linear_network(bn, mode):
    """c' = c: Q is a rotation, consumers get Q^+ = Q^T, and BN is folded: the output is unchanged
    (residual add, concat slices and flatten->Linear repeats included)."""
    model, x, graph = _setup(act=False, bn=bn)
    plan = PruningPlan({g.id: torch.arange(g.size) for g in graph.prunable_groups()})
    pruned, comp = _compensate(model, graph, plan, alpha=-1.0, mode=mode)
    assert len(comp.report["rebased"]) == 3
    for m in ("c1", "c2", "c3"):  # really rotated, not left alone
        assert not torch.allclose(getattr(pruned, m).weight, getattr(model, m).weight, atol=1e-3)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


def test_full_width_procrustes_reproduces_a_relu_network():
    """Procrustes aligns the lossless sketch back onto the filters: Q = I, ReLU and all."""
    model, x, graph = _setup(act=True)
    plan = PruningPlan({g.id: torch.arange(g.size) for g in graph.prunable_groups()})
    for bn in ("keep", "fold"):
        pruned, comp = _compensate(model, graph, plan, alpha=-1.0, variant="procrustes", bn=bn)
        assert len(comp.report["rebased"]) == 3
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-5)


class Residual(nn.Module):
    """y = c1(x) + c2(x) -> 1x1 head: one residual group, no BN, no activation."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def stream(self, x):
        return self.c1(x) + self.c2(x)

    def forward(self, x):
        return self.head(self.stream(x))


def test_linear_residual_toy_gives_the_projected_original_output():
    """One shared basis for the add: the head sees P y, P the projector on the top-c' left
    singular vectors of A = [W1 | W2] (computed here independently of the compensator)."""
    torch.manual_seed(1)
    model = Residual().eval()
    x = torch.randn(2, 3, 6, 6)
    graph = trace(model, (x,), protected=("head",))
    (group,) = graph.prunable_groups()
    plan = PruningPlan({group.id: torch.arange(6)})
    pruned, comp = _compensate(model, graph, plan, alpha=0.3, mode="svd")
    A = torch.cat([model.c1.weight.flatten(1), model.c2.weight.flatten(1)], 1).double()
    u = torch.linalg.svd(A, full_matrices=False)[0][:, :6]
    P = (u @ u.T).float()
    y = model.stream(x)
    expected = model.head(
        torch.einsum("ij,bjhw->bihw", P, y - model.c1.bias[:, None, None] - model.c2.bias[:, None, None])
        + torch.einsum("ij,j->i", P, model.c1.bias + model.c2.bias)[:, None, None]
    )
    torch.testing.assert_close(pruned(x), expected, rtol=1e-4, atol=1e-5)
    # both producers end at width c' and carry Q times the stacked filters (one shared basis)
    assert pruned.c1.out_channels == pruned.c2.out_channels == 6
    B = torch.cat([pruned.c1.weight.flatten(1), pruned.c2.weight.flatten(1)], 1).double()
    torch.testing.assert_close(B.T @ B, A.T @ u @ u.T @ A, rtol=1e-5, atol=1e-6)
    (entry,) = comp.report["groups"]
    assert entry["rebased"] and entry["mixed"] == 16 and entry["sketch"] == 6
    s = torch.linalg.svdvals(A.detach())
    assert entry["gram_error"] == pytest.approx(float(s[6] ** 2 / s[0] ** 2), rel=1e-6)


def test_producer_weights_are_the_sketch_of_the_folded_filters():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c2",): 4})
    pruned, _ = _compensate(model, graph, plan, alpha=0.3, mode="fd")
    keep_in = torch.arange(12)  # c2 reads group {c1, c3}, not pruned here
    scale = model.b2.weight / (model.b2.running_var + model.b2.eps).sqrt()
    A = (model.c2.weight[:, keep_in] * scale[:, None, None, None]).flatten(1).double()
    B = fd_sketch(A, 4, "fd")
    W = pruned.c2.weight.flatten(1).double()
    torch.testing.assert_close(W.T @ W, B.T @ B, rtol=1e-5, atol=1e-6)
    assert pruned.c2.bias.abs().max() == 0  # folded into the BN shift


def test_bn_fold_is_exact_in_eval_mode_whatever_the_statistics():
    """fold sets gamma' = sqrt(var' + eps), beta' = mean' + Q b: BN(z') = z' + Q b for any stats."""
    model, x, graph = _setup(act=False)
    plan = _plan(graph, {("c2",): 5})
    pruned, _ = _compensate(model, graph, plan, alpha=0.3)
    before = pruned(x)
    pruned.b2.running_mean.add_(3.0)
    pruned.b2.running_var.mul_(5.0)
    pruned.b2.weight.data.copy_((pruned.b2.running_var + pruned.b2.eps).sqrt())
    pruned.b2.bias.data.add_(3.0)
    torch.testing.assert_close(pruned(x), before, rtol=1e-4, atol=1e-5)


def _loader(n_batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 4, 4, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(n_batches)]


def _input_stats(model, module, batches):
    seen = []
    h = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().transpose(0, 1).flatten(1)))
    with torch.no_grad():
        for xb, _ in batches:
            model(xb)
    h.remove()
    flat = torch.cat(seen, 1)
    return flat.mean(1), flat.var(1)


def test_fold_calibration_measures_the_new_channels_and_keeps_the_output():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c2",): 4})
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=0.3, calib_batches=2)
    loader = _loader(3)
    comp.compensate(model, pruned, plan, PruneContext(graph=graph, train_loader=loader))
    assert comp.report["bn_statistics"] == "calibrated on 2 batches"
    mean, var = _input_stats(pruned.eval(), pruned.b2, loader[:2])
    torch.testing.assert_close(pruned.b2.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned.b2.running_var, var, rtol=1e-4, atol=1e-5)
    uncalibrated, _ = _compensate(model, graph, plan, alpha=0.3)
    assert _compensate(model, graph, plan, alpha=0.3)[1].report["bn_statistics"] == "propagated"
    torch.testing.assert_close(pruned(x), uncalibrated(x), rtol=1e-4, atol=1e-5)


def test_reinit_resets_affine_and_runs_adabn_on_the_new_channels_only():
    model, x, graph = _setup(act=True)
    gs = _groups(graph)
    plan = PruningPlan({gs[("c1", "c3")].id: torch.tensor([0, 1, 2, 5, 7, 11])})
    pruned = graph.apply(model, plan)
    untouched = pruned.b2.running_mean.clone()
    comp = Sketch(alpha=0.3, bn="reinit", calib_batches=3)
    comp.compensate(model, pruned, plan, PruneContext(graph=graph, train_loader=_loader(3)))
    for bn in (pruned.b1, pruned.b3):
        assert torch.equal(bn.weight, torch.ones(6)) and torch.equal(bn.bias, torch.zeros(6))
    # b1 is the first BN: its input does not depend on other statistics -> plain batch stats
    per_batch = [_input_stats(pruned.eval(), pruned.b1, [b]) for b in _loader(3)]
    mean = torch.stack([m for m, _ in per_batch]).mean(0)  # BN's cumulative average (momentum=None)
    var = torch.stack([v for _, v in per_batch]).mean(0)
    torch.testing.assert_close(pruned.b1.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned.b1.running_var, var, rtol=1e-4, atol=1e-5)
    assert torch.equal(pruned.b2.running_mean, untouched)  # not a group of the rebase
    assert pruned.b1.momentum == 0.1 and not pruned.training


def test_earlier_compensator_edits_survive_outside_rebased_positions():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c2",): 4})
    pruned = graph.apply(model, plan)
    with torch.no_grad():
        pruned.c4.bias.add_(1.0)  # e.g. fold-beta folding removed channels' beta into a consumer
        pruned.c4.weight[:, :12].mul_(2.0)  # e.g. ThiNet scaling the kept inputs of group {c1,c3}
    edited = pruned.c4.weight.detach().clone()
    Sketch(alpha=0.3).compensate(model, pruned, plan, PruneContext(graph=graph))
    assert torch.equal(pruned.c4.bias, model.c4.bias + 1.0)
    assert torch.equal(pruned.c4.weight[:, :12], edited[:, :12])  # c4's b-slice (group c2) is rebased
    assert not torch.equal(pruned.c4.weight[:, 12:], edited[:, 12:])


def test_recalibrate_all_runs_adabn_everywhere_and_keeps_folded_outputs_exact():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c2",): 4})
    loader = _loader(3)
    pruned = graph.apply(model, plan)
    comp = Sketch(alpha=0.3, calib_batches=3, recalibrate="all")
    comp.compensate(model, pruned, plan, PruneContext(graph=graph, train_loader=loader))
    assert comp.report["bn_statistics"] == "calibrated on 3 batches; AdaBN on every BN (3 batches)"
    # b1 (not rebased) now holds the pruned network's own statistics (cumulative AdaBN average)
    per_batch = [_input_stats(pruned.eval(), pruned.b1, [b]) for b in loader]
    torch.testing.assert_close(
        pruned.b1.running_mean, torch.stack([m for m, _ in per_batch]).mean(0), rtol=1e-4, atol=1e-5
    )
    # the folded BN b2 still gives exactly z' + Q b in eval mode
    z = []
    h = pruned.b2.register_forward_hook(lambda m, a, o: z.append((a[0], o)))
    pruned(x)
    h.remove()
    ((inp, out),) = z
    shift = pruned.b2.bias - pruned.b2.running_mean
    torch.testing.assert_close(out, inp + shift[None, :, None, None], rtol=1e-4, atol=1e-5)


class WithGroupNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.dw(self.n1(self.c1(x))))


def test_per_channel_modules_keep_plain_selection_with_a_reason():
    model = WithGroupNorm().eval()
    x = torch.randn(1, 3, 5, 5)
    graph = trace(model, (x,))
    (group,) = graph.prunable_groups()
    plan = PruningPlan({group.id: torch.arange(0, 8, 2)})
    pruned, comp = _compensate(model, graph, plan, alpha=0.3)
    reference = graph.apply(model, plan)
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), reference.state_dict().values()))
    (entry,) = comp.report["groups"]
    assert not entry["rebased"]
    assert entry["reason"] == "per-channel module 'n1' (GroupNorm) cannot take mixed channels"


def test_report_is_json_and_names_the_settings():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c1", "c3"): 4, ("c2",): 8})
    _, comp = _compensate(model, graph, plan, alpha=0.3, mode="svd")
    rep = json.loads(json.dumps(comp.report))
    assert {k: rep[k] for k in ("compensator", "alpha", "mode", "variant", "bn", "recalibrate", "bn_statistics")} == {
        "compensator": "sketch",
        "alpha": 0.3,
        "mode": "svd",
        "variant": "rebase",
        "bn": "fold",
        "recalibrate": "new",
        "bn_statistics": "propagated",
    }
    by_group = {tuple(e["producers"]): e for e in rep["groups"]}
    assert by_group[("c1", "c3")]["ratio"] == pytest.approx(2 / 3) and by_group[("c1", "c3")]["rebased"]
    assert 0 < by_group[("c1", "c3")]["gram_error"] < 1
    assert not by_group[("c2",)]["rebased"] and by_group[("c2",)]["gram_error"] is None


def test_traces_the_dense_model_when_the_context_has_no_graph():
    model, x, graph = _setup(act=True)
    plan = _plan(graph, {("c2",): 4})
    with_graph, _ = _compensate(model, graph, plan, alpha=0.3)
    pruned = graph.apply(model, plan)
    Sketch(alpha=0.3).compensate(model, pruned, plan, PruneContext(example_inputs=(x,)))
    assert torch.equal(pruned.c2.weight, with_graph.c2.weight)
    with pytest.raises(
        DetpruneError, match=r"^no channel graph to work on: set ctx.graph, ctx.example_inputs or ctx.adapter$"
    ):
        Sketch().compensate(model, graph.apply(model, plan), plan, PruneContext())


def test_empty_plan_changes_nothing():
    model, x, graph = _setup(act=True)
    pruned = graph.apply(model, PruningPlan({}))
    Sketch(alpha=-1.0).compensate(model, pruned, PruningPlan({}), PruneContext(graph=graph))
    assert all(torch.equal(a, b) for a, b in zip(pruned.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize(
    "opts,message",
    [
        ({"mode": "qr"}, "compensator 'sketch': mode must be one of fd, fd-liberty, svd, got 'qr'"),
        ({"variant": "x"}, "compensator 'sketch': variant must be one of rebase, procrustes, filtersketch, got 'x'"),
        ({"bn": "drop"}, "compensator 'sketch': bn must be one of fold, reinit, keep, got 'drop'"),
        ({"alpha": 1.0}, r"compensator 'sketch': alpha must be in \[-1, 1\) \(a prune ratio\), got 1.0"),
        ({"calib_batches": -1}, "compensator 'sketch': calib_batches must be >= 0, got -1"),
        ({"recalibrate": "some"}, "compensator 'sketch': recalibrate must be 'new' or 'all', got 'some'"),
    ],
)
def test_bad_options_are_one_line_errors(opts, message):
    with pytest.raises(SketchOptionError, match=f"^{message}$"):
        Sketch(**opts)


def test_registered_as_a_compensator():
    comp = detprune.plugins().compensator("sketch", alpha=0.5, mode="svd", calib_batches=0, variant="procrustes")
    assert isinstance(comp, Sketch) and comp.bn == "keep" and comp.alpha == 0.5


def test_filtersketch_variant_sketches_filters_and_leaves_consumers_selected():
    """FilterSketch's init (a control of the fidelity study): the producer's filters become the
    sketch, its consumers keep exactly the input slices plain selection gives them."""
    model, x, graph = _setup(bn=False)
    plan = _plan(graph, {("c2",): 4})
    selected = graph.apply(model, plan)
    pruned, comp = _compensate(model, graph, plan, alpha=0.3, mode="svd", variant="filtersketch")
    assert comp.report["rebased"] == [_groups(graph)[("c2",)].id]
    want = fd_sketch(model.c2.weight.detach().double().flatten(1), 4, "svd")
    assert torch.allclose(pruned.c2.weight.detach().double().flatten(1), want, atol=1e-6)
    assert torch.equal(pruned.c4.weight, selected.c4.weight)  # c4 reads c2's channels unmixed
    assert not torch.equal(pruned.c2.weight, selected.c2.weight)

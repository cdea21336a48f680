"""ThiNet pruner, criterion and thinet-lsq compensator on real architectures (VGG16-CIFAR, ResNet-56):
plans at the asked ratio, residual trunks left alone by default, LSQ lowering the reconstruction
error on held-out activations, deterministic re-sampling, clear option errors."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.plugin.context import PruneContext
from detprune_plugins.thinet.plugin import CACHE, ThiNetOptionError


def _adapter(name: str, width: float = 0.125):
    ad = detprune.plugins().adapter(name, width=width)
    return ad, ad.build().eval()


def _loader(n_batches: int = 2, batch: int = 8, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(batch, 3, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def _ctx(ad, model, loader, ratio=0.5, **kw):
    graph = trace(model, ad.example_inputs(2), protected=ad.protected(model))
    return graph, PruneContext(
        example_inputs=ad.example_inputs(2), ratio=ratio, adapter=ad, train_loader=loader, graph=graph, **kw
    )


def _pruner(**kw):
    kw.setdefault("images", 16)
    kw.setdefault("locations", 5)
    return detprune.plugins().pruner("thinet", progress=False, **kw)


def test_vgg16_oneshot_prunes_every_conv_group_by_half_and_compensates():
    ad, model = _adapter("vgg16-cifar")
    graph, ctx = _ctx(ad, model, _loader())
    plan = _pruner().plan(model, graph, ctx)
    groups = graph.prunable_groups()
    assert len(groups) == 13 and set(plan.kept) == {g.id for g in groups}
    for g in groups:
        assert len(plan.kept[g.id]) == round(g.size / 2)
    json.dumps(plan.to_dict())  # the recipe stores meta
    assert plan.meta["pruner"] == "thinet" and plan.meta["achieved_ratio"] == pytest.approx(0.5)
    small = graph.apply(model, plan)
    before = copy.deepcopy(small.state_dict())
    detprune.plugins().compensator("thinet-lsq", progress=False).compensate(model, small, plan, ctx)
    changed = [k for k, v in small.state_dict().items() if not torch.equal(v, before[k])]
    assert "features.3.weight" in changed and "classifier.weight" in changed  # every consumer rescaled
    assert not any(k.endswith(("running_mean", "bias")) for k in changed)
    out = small(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_resnet56_inner_scope_leaves_the_residual_trunk_and_all_scope_prunes_it():
    ad, model = _adapter("resnet56-cifar")
    graph, ctx = _ctx(ad, model, _loader())
    trunk = [g.id for g in graph.prunable_groups() if len(g.modules("out")) > 1]
    inner = [g.id for g in graph.prunable_groups() if len(g.modules("out")) == 1]
    assert trunk and len(inner) == 27
    plan = _pruner().plan(model, graph, ctx)
    assert set(plan.kept) == set(inner)
    small = graph.apply(model, plan)
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert detprune.eval.measure.count_params(small) < detprune.eval.measure.count_params(model)
    plan_all = _pruner(scope="all").plan(model, graph, ctx)
    assert set(trunk) <= set(plan_all.kept)
    assert graph.apply(model, plan_all)(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def _consumer_error(original, candidate, layer: str, images: torch.Tensor) -> float:
    """Squared error of ``layer``'s output (no bias in VGG convs) between two models on the same images."""
    outs = []
    for m in (original, candidate):
        got = []
        h = m.get_submodule(layer).register_forward_hook(lambda mod, a, o, got=got: got.append(o))
        with torch.no_grad():
            m.eval()(images)
        h.remove()
        outs.append(got[0])
    return float((outs[0] - outs[1]).square().sum())


def _vgg_with_twins(loader) -> tuple[nn.Module, object, torch.Tensor]:
    """VGG16-CIFAR (width 0.25) with BN statistics of ``loader``'s images and planted redundancy:
    channel 16+c of features.7 outputs half of channel c, and features.10 reads it with k_c times
    channel c's weights. Dropping the twin and scaling channel c by 1 + k_c/2 reconstructs exactly,
    the case ThiNet's least-squares step (§3.3) is for."""
    ad, model = _adapter("vgg16-cifar", width=0.25)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in itertools.islice(loader, 4):
            model(batch[0])
    model.eval()
    conv, bn, nxt = model.features[7], model.features[8], model.features[10]
    n = conv.out_channels // 2
    k = torch.linspace(0.5, 1.5, n)
    with torch.no_grad():
        conv.weight[n:] = conv.weight[:n]
        bn.running_mean[n:], bn.running_var[n:] = bn.running_mean[:n], bn.running_var[:n]
        bn.weight[n:], bn.bias[n:] = 0.5 * bn.weight[:n], 0.5 * bn.bias[:n]
        nxt.weight[:, n:] = k[None, :, None, None] * nxt.weight[:, :n]
    return model, ad, k


def _lsq_on_twins(fit_loader, heldout: torch.Tensor) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    model, ad, k = _vgg_with_twins(fit_loader)
    graph, ctx = _ctx(ad, model, fit_loader)
    full = _pruner(images=48, locations=10).plan(model, graph, ctx)
    g = next(g for g in graph.prunable_groups() if g.modules("out") == ["features.7"])
    plan = PruningPlan({g.id: full.kept[g.id]}, meta=dict(full.meta))  # one layer, as ThiNet judges it
    plain, scaled = graph.apply(model, plan), graph.apply(model, plan)
    detprune.plugins().compensator("thinet-lsq", progress=False).compensate(model, scaled, plan, ctx)
    ratio = scaled.features[10].weight / plain.features[10].weight  # the folded per-channel scales
    scales = ratio.flatten(2).median(dim=2).values.median(dim=0).values
    expected = torch.tensor(
        [
            1 + k[c] / 2 if c < len(k) and c + len(k) not in plan.kept[g.id] else float("nan")
            for c in plan.kept[g.id].tolist()
        ]
    )
    return (
        _consumer_error(model, plain, "features.10", heldout),
        _consumer_error(model, scaled, "features.10", heldout),
        scales,
        expected,
    )


def _check_twins(plain: float, scaled: float, scales: torch.Tensor, expected: torch.Tensor) -> None:
    known = ~torch.isnan(expected)
    assert int(known.sum()) == 16  # ThiNet's greedy dropped exactly the 16 weaker twins
    torch.testing.assert_close(scales[known].detach(), expected[known], atol=1e-4, rtol=0.0)
    assert scaled < 1e-6 * plain  # exact reconstruction on images never sampled


def test_lsq_scaling_lowers_the_reconstruction_error_on_held_out_images():
    heldout = _loader(1, 16, seed=99)[0][0]
    _check_twins(*_lsq_on_twins(_loader(6), heldout))


def test_lsq_scaling_lowers_the_reconstruction_error_on_cifar_images(shared_data):
    from detprune.data import build_dataset, load_card, make_loader

    card = load_card(shared_data / "cifar10-sample")
    train = make_loader(build_dataset(card, split="train"), batch_size=16, shuffle=True)
    test = build_dataset(card, split="test")
    heldout = torch.stack([test[i][0] for i in range(0, 10000, 625)])
    _check_twins(*_lsq_on_twins(train, heldout))


def test_compensator_resamples_to_the_same_scales_when_the_cache_is_gone():
    ad, model = _adapter("vgg16-cifar")
    graph, ctx = _ctx(ad, model, _loader())
    plan = _pruner().plan(model, graph, ctx)  # leaves its samples in the cache
    comp = detprune.plugins().compensator("thinet-lsq", progress=False)
    a, b = graph.apply(model, plan), graph.apply(model, plan)
    comp.compensate(model, a, plan, ctx)
    CACHE.clear()
    comp.compensate(model, b, plan, dataclass_replace(ctx, graph=None))  # re-traces and re-samples
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def dataclass_replace(ctx, **kw):
    import dataclasses

    return dataclasses.replace(ctx, **kw)


def test_cache_is_dropped_when_the_weights_change():
    ad, model = _adapter("vgg16-cifar")
    loader = _loader(1)
    recs = trace(model, ad.example_inputs(1)).records
    a = CACHE.get(model, recs, ["features.3"], loader, 8, 5, 0, progress=False)["features.3"]
    assert CACHE.get(model, recs, ["features.3"], loader, 8, 5, 0, progress=False)["features.3"] is a
    with torch.no_grad():
        model.features[0].weight.mul_(2.0)
    b = CACHE.get(model, recs, ["features.3"], loader, 8, 5, 0, progress=False)["features.3"]
    assert b is not a and not torch.equal(a.X, b.X)


def test_a_plan_that_removes_nothing_leaves_the_model_unchanged():
    ad, model = _adapter("vgg16-cifar")
    graph, ctx = _ctx(ad, model, _loader(), ratio=0.0)
    plan = _pruner().plan(model, graph, ctx)
    assert plan.kept == {}
    small = graph.apply(model, plan)
    before = copy.deepcopy(small.state_dict())
    detprune.plugins().compensator("thinet-lsq", progress=False).compensate(model, small, plan, ctx)
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())


def test_criterion_gives_the_pruners_oneshot_plan():
    ad, model = _adapter("vgg16-cifar")
    graph, ctx = _ctx(ad, model, _loader())
    plan = _pruner().plan(model, graph, ctx)
    crit = detprune.plugins().criterion("thinet", images=16, locations=5, progress=False)
    res = detprune.prune(
        model,
        ad.example_inputs(2),
        ratio=0.5,
        criterion=crit,
        protected=ad.protected(model),
        ctx=dataclass_replace(ctx, graph=None),
    )
    assert {k: v.tolist() for k, v in res.plan.kept.items()} == {k: v.tolist() for k, v in plan.kept.items()}


def test_global_ranking_works_one_shot_and_is_refused_layer_by_layer():
    ad, model = _adapter("vgg16-cifar")
    graph, ctx = _ctx(ad, model, _loader(), ratio=0.4, global_ranking=True)
    plan = _pruner().plan(model, graph, ctx)
    total = sum(g.size for g in graph.prunable_groups())
    removed = sum(g.size - plan.kept_count(g.id, g.size) for g in graph.prunable_groups())
    assert removed == round(0.4 * total)
    assert len({len(v) / graph.group(k).size for k, v in plan.kept.items()}) > 1  # not uniform
    with pytest.raises(ThiNetOptionError, match="^thinet mode 'layerwise' prunes each group at the asked ratio"):
        _pruner(mode="layerwise").plan(model, graph, ctx)


class Conv1dConsumer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Conv1d(6, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).flatten(2))


def test_groups_with_unsupported_consumers_are_skipped_with_the_reason():
    model = Conv1dConsumer().eval()
    x = torch.randn(4, 3, 8, 8)
    graph = trace(model, (x,), protected=("head",))
    ctx = PruneContext(example_inputs=(x,), ratio=0.5, train_loader=[(x,)], graph=graph)
    plan = _pruner(images=4).plan(model, graph, ctx)
    gb = next(g for g in graph.groups if g.modules("out") == ["b"])
    ga = next(g for g in graph.groups if g.modules("out") == ["a"])
    assert list(plan.kept) == [ga.id]
    assert plan.meta["thinet_skipped"] == {
        str(gb.id): "head: consumer is a Conv1d; ThiNet samples Conv2d, ConvTranspose2d and Linear"
    }
    crit = detprune.plugins().criterion("thinet", images=4, progress=False)
    with pytest.raises(
        DetpruneError, match=rf"^criterion 'thinet' cannot score group {gb.id} \(b\): head: consumer is a Conv1d"
    ):
        crit.score(model, gb, ctx)


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"mode": "greedy"}, "thinet option 'mode' must be one of 'oneshot', 'layerwise', got 'greedy'"),
        ({"scope": "trunk"}, "thinet option 'scope' must be one of 'inner', 'all', got 'trunk'"),
        ({"images": 0}, "thinet option 'images' must be an integer >= 1, got 0"),
        ({"locations": "ten"}, "thinet option 'locations' must be an integer, got 'ten'"),
        ({"layer_finetune_steps": 2.5}, "thinet option 'layer_finetune_steps' must be an integer >= 0, got 2.5"),
        ({"scale": "maybe"}, "thinet option 'scale' must be true or false, got 'maybe'"),
    ],
)
def test_option_errors_name_the_option(kw, msg):
    with pytest.raises(ThiNetOptionError) as e:
        detprune.plugins().pruner("thinet", **kw)
    assert str(e.value) == msg


def test_string_options_from_the_command_line_are_accepted():
    p = detprune.plugins().pruner("thinet", images="32", locations="4", layer_finetune_steps="3", scale="false")
    assert (p.images, p.locations, p.steps, p.scale) == (32, 4, 3, False)


def test_no_training_loader_is_a_clear_error():
    ad, model = _adapter("vgg16-cifar")
    graph, ctx = _ctx(ad, model, None)
    with pytest.raises(DetpruneError, match="^ThiNet samples activations on training images: no training loader"):
        _pruner().plan(model, graph, ctx)

"""MFP's distance criteria (minkowski-p1, minkowski-p2, cosine): equal to a direct scipy ``cdist``
computation, concatenation across a residual group's producers, all-zero filters ranked lowest (so soft
pruning's zeroed set stays at its target), the redundant filter is the one that goes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from test_train_support import TinyAdapter, colour_dataset

import detprune
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.criteria.distance import ZERO_SCORE, distance_sums, group_filter_matrix
from detprune_plugins.mfp.pruner import MFP
from zoo import build

SCIPY = {"minkowski-p1": "cityblock", "minkowski-p2": "euclidean", "cosine": "cosine"}


@pytest.mark.parametrize("name", list(SCIPY))
def test_single_producer_scores_equal_scipy_cdist_row_sums(name):
    model, x = build("simple_cnn")
    graph = trace(model, x)
    g = next(g for g in graph.groups if g.modules("out") == ["features.1.0"])
    w = model.features[1][0].weight.detach().flatten(1).numpy()
    expected = cdist(w, w, SCIPY[name]).sum(1)
    raw = detprune.plugins().criterion(name, normalize=False).score(model, g, None)
    assert raw.shape == (16,) and raw.dtype == torch.float32
    np.testing.assert_allclose(raw.numpy(), expected, rtol=1e-4)
    # the per-producer normaliser scales a single layer's scores uniformly (cosine: not at all)
    normed = detprune.plugins().criterion(name).score(model, g, None).numpy()
    np.testing.assert_allclose(normed / normed.sum(), expected / expected.sum(), rtol=1e-4)


@pytest.mark.parametrize("name", list(SCIPY))
def test_residual_group_concatenates_each_channels_filters_across_producers(name):
    model, x = build("tiny_resnet")
    graph = trace(model, x)
    g = next(g for g in graph.groups if len(g.producers) == 3)
    p = 1 if name == "minkowski-p1" else 2
    blocks = []
    for slot in g.producers:
        w = model.get_submodule(slot.module).weight.detach().flatten(1).numpy()
        w = w / np.linalg.norm(w, ord=p, axis=1).mean()
        block = np.zeros((g.size, w.shape[1]))
        block[slot.channel.numpy()] = w[slot.index.numpy()]
        blocks.append(block)
    concat = np.concatenate(blocks, axis=1)
    expected = cdist(concat, concat, SCIPY[name]).sum(1)
    got = detprune.plugins().criterion(name).score(model, g, None).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert group_filter_matrix(model, g).shape == (g.size, sum(b.shape[1] for b in blocks))


def test_cosine_is_finite_and_an_all_zero_filter_scores_lowest():
    x = torch.randn(6, 10)
    x[2] = 0.0  # a soft-pruned filter
    g = distance_sums(x, "cosine")
    assert torch.isfinite(g).all()
    assert g[2].item() == ZERO_SCORE
    nz = [0, 1, 3, 4, 5]
    expected = cdist(x[nz].numpy(), x[nz].numpy(), "cosine").sum(1) + 1.0  # + the distance 1 to the zero row
    np.testing.assert_allclose(g[nz].numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", list(SCIPY))
@pytest.mark.parametrize("normalize", [True, False])
def test_all_zero_filters_rank_strictly_lowest(name, normalize):
    model, x = build("simple_cnn")
    graph = trace(model, x)
    g = next(g for g in graph.groups if g.modules("out") == ["features.1.0"])
    conv = model.features[1][0]
    with torch.no_grad():
        conv.weight[[3, 9]] = 0.0
        conv.weight[5] *= 1e-3  # small but alive: scored by its distances
    s = detprune.plugins().criterion(name, normalize=normalize).score(model, g, None)
    assert torch.isfinite(s).all()
    alive = [i for i in range(16) if i not in (3, 9)]
    assert s[[3, 9]].max() < s[alive].min()
    assert sorted(torch.argsort(s)[:2].tolist()) == [3, 9]
    everything = distance_sums(torch.zeros(4, 5), name)  # a group with no filter left: all tie, still finite
    assert everything.tolist() == [ZERO_SCORE] * 4


@pytest.mark.parametrize("name", list(SCIPY))
def test_soft_pruning_keeps_the_zeroed_set_at_its_target(name, tmp_path):
    """Without momentum a zeroed channel (mask through BN, ReLU) gets no update and stays zero; if the
    criterion ranked it above live filters, each epoch would zero new ones on top (cosine used to zero
    the whole first layer)."""
    torch.manual_seed(0)
    adapter = TinyAdapter(width=8)
    train = make_loader(colour_dataset(32, 1), 8, train=True, seed=0)
    ctx = PruneContext(example_inputs=adapter.example_inputs(1), ratio=0.25, adapter=adapter, train_loader=train)
    pruner = MFP(criteria=[name], progress=False).bind(ctx)
    model = adapter.build()
    Trainer(model, adapter, train, None, epochs=6, out_dir=tmp_path, pruner=pruner, lr=0.05, momentum=0.0,
            warmup_epochs=0.5, progress=False, device="cpu").fit()  # fmt: skip
    zeros = [int((m.weight.detach().flatten(1).norm(dim=1) == 0).sum()) for m in (model[0], model[3])]
    assert zeros == [2, 4]  # 25 % of 8 and of 16


@pytest.mark.parametrize("name", ["minkowski-p1", "minkowski-p2", "cosine"])
def test_the_filter_closest_to_the_others_is_pruned(name):
    model, x = build("simple_cnn")
    conv = model.features[0][0]
    with torch.no_grad():
        others = torch.cat([conv.weight[:3], conv.weight[4:]])
        conv.weight[3] = others.median(dim=0).values if name == "minkowski-p1" else others.mean(dim=0)
    result = detprune.prune(model, x, ratio=1 / 8, criterion=name)  # exactly one of 8 filters goes
    g = next(g for g in result.graph.groups if g.modules("out") == ["features.0.0"])
    assert sorted(set(range(8)) - set(result.plan.kept[g.id].tolist())) == [3]


def test_unknown_distance_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown distance 'hamming'; known: minkowski-p1, minkowski-p2, cosine"):
        distance_sums(torch.randn(3, 4), "hamming")


def test_distance_criteria_are_registered_with_descriptions():
    entries = {e.name: e for e in detprune.plugins().entries("criterion")}
    for name in SCIPY:
        assert entries[name].plugin.dist == "detprune"
    assert entries["minkowski-p1"].description.startswith("Sum of ℓ1 (Manhattan) distances")
    assert entries["cosine"].description.startswith("Sum of cosine distances")

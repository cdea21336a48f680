"""detprune.prune: one call from a dense model to a smaller, checked one."""

from __future__ import annotations

import pytest
import torch

import detprune
from detprune.errors import GraphError, UnknownPluginError
from zoo import YoloToy, build, out_channels, run


def test_prune_returns_a_smaller_copy_with_the_outputs_shapes():
    torch.manual_seed(0)
    model, x = YoloToy().eval(), torch.rand(1, 3, 32, 32)
    result = detprune.prune(model, x, ratio=0.5, round_to=4)
    assert result.model is not model and result.dense is model
    assert result.params_after < 0.45 * result.params_before
    assert [t.shape for t in run(model, (x,))] == [t.shape for t in run(result.model, (x,))]
    assert result.plan.meta == {
        "ratio": 0.5,
        "round_to": 4,
        "global_ranking": False,
        "min_keep": 0.0,
        "criterion": "l1",
    }
    for name in ("head_big", "head_small"):  # outputs keep their channels without being listed
        assert out_channels(result.model.get_submodule(name)) == 24
    assert all(len(k) % 4 == 0 for k in result.plan.kept.values() if len(k) > 1)


def test_criterion_objects_protection_and_inplace():
    model, x = build("inception")

    class Last:
        def score(self, model, group, ctx):
            assert ctx.ratio == 0.5
            return torch.arange(group.size, dtype=torch.float32)

    result = detprune.prune(model, x, ratio=0.5, criterion=Last(), protected=("b1",), inplace=True)
    assert result.model is model and result.dense is None
    assert model.b1[0].out_channels == 4 and model.b2[0][0].out_channels == 3
    with pytest.raises(ValueError, match="the dense model is not available"):
        _ = result.flops_before


def test_unknown_criterion_and_bad_inputs():
    model, x = build("simple_cnn")
    with pytest.raises(UnknownPluginError, match=r"unknown criterion 'L3'.*Known criteria: .*l1, l2"):
        detprune.prune(model, x, criterion="L3")
    with pytest.raises(GraphError, match=r"example_inputs must be a tensor or a tuple of tensors, got dict"):
        detprune.prune(model, {"x": x[0]})
    with pytest.raises(GraphError, match=r"the model's forward failed while tracing: RuntimeError"):
        detprune.prune(model, torch.rand(1, 5, 8, 8))


def test_a_criterion_is_prepared_once_scored_per_group_and_reset():
    """The Criterion lifecycle: data-driven criteria compute once in prepare() and drop it in reset()."""
    from detprune.plugin.protocols import Criterion

    model, x = build("simple_cnn")
    calls = []

    class Recording(Criterion):
        def prepare(self, model, graph, ctx):
            calls.append(("prepare", len(graph.prunable_groups()), ctx.graph is graph))

        def score(self, model, group, ctx):
            calls.append("score")
            return torch.arange(group.size, dtype=torch.float32)

        def reset(self):
            calls.append("reset")

    result = detprune.prune(model, x, ratio=0.5, criterion=Recording())
    groups = len(result.graph.prunable_groups())
    assert calls == [("prepare", groups, True), *["score"] * groups, "reset"]

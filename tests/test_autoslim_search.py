"""AutoSlim's greedy slimming: it takes the best-scoring bin each step, stops at each FLOPs budget,
resumes from its state file to the same result, and ``plan`` hands the pipeline a buildable plan."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset

import detprune
from detprune.errors import DetpruneError
from detprune.eval.measure import count_flops
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.training.distributed import make_loader
from detprune_plugins.autoslim.flops import FlopModel
from detprune_plugins.autoslim.pruner import AutoSlim
from detprune_plugins.autoslim.score import Scorer, take_batches
from detprune_plugins.autoslim.search import (
    SearchStateError,
    found_config,
    greedy_slimming,
)
from detprune_plugins.autoslim.slimmable import Slimmable, bn_state


def setup(width=8, seed=0):
    torch.manual_seed(seed)
    adapter = TinyAdapter(width=width)
    model = adapter.build()
    inputs = adapter.example_inputs(1)
    graph = trace(model, inputs, protected=adapter.protected(model))
    train = make_loader(colour_dataset(64, 1), 16, train=True, seed=0)
    val = make_loader(colour_dataset(32, 2), 16, train=False)
    return adapter, model, graph, inputs, train, val


def make_scorer(adapter, model, graph, train, val, **kw):
    slim = Slimmable(model, graph).attach()
    scorer = Scorer(model, slim, adapter, take_batches(val, 2), [b[0] for b in take_batches(train, 2, seed=1)], **kw)
    return slim, scorer


def test_greedy_takes_the_best_scoring_bin_each_step():
    adapter, model, graph, inputs, *_ = setup()
    slim, flops = Slimmable(model, graph), FlopModel(model, graph, inputs)
    a, b = slim.units  # conv 0 (8 channels: 8 levels), conv 3 (16 channels: 10 levels)
    top = {u: len(slim.levels[u]) for u in (a, b)}
    # a made-up score: each bin of b costs 1, the k-th bin of a costs 3(2k-1); greedy must take b
    # down to its narrowest level first, then a, until the FLOPs budget is met
    score = lambda c: (-(3.0 * (top[a] - c[a]) ** 2 + (top[b] - c[b])),)  # noqa: E731
    state = greedy_slimming(slim, flops, score, [0.45], progress=False)
    units = [h["unit"] for h in state["history"]]
    assert units[: top[b] - 1] == [b] * (top[b] - 1) and set(units[top[b] - 1 :]) == {a}
    assert state["done"] and state["found"][0]["flops"] <= 0.45 < state["history"][-2]["flops"]


def test_each_budget_is_respected_and_counted_on_the_pruned_model():
    adapter, model, graph, inputs, train, val = setup()
    slim, scorer = make_scorer(adapter, model, graph, train, val)
    flops = FlopModel(model, graph, inputs)
    state = greedy_slimming(slim, flops, scorer, [0.3, 0.6], progress=False)
    slim.detach()
    assert [f["target"] for f in state["found"]] == [0.6, 0.3]
    prev = 1.0
    for f in state["found"]:
        cfg = found_config(state, f["target"])
        pruned = graph.apply(model, slim.plan_of(cfg))
        counted = count_flops(pruned, inputs) / count_flops(model, inputs)
        assert counted == pytest.approx(f["flops"], abs=1e-9) and counted <= f["target"] < prev
        prev = f["target"]
    # greedy stops as soon as each budget is met, and scored one candidate per unit that could narrow
    history = [h["flops"] for h in state["history"]]
    assert sorted(history, reverse=True) == history
    for f in state["found"]:
        assert f["flops"] == next(x for x in history if x <= f["target"])
    levels, expected = slim.max_config(), 0
    for h in state["history"]:
        expected += sum(1 for u in levels if levels[u] > 1)
        levels[h["unit"]] -= 1
    assert scorer.evaluations == expected


def test_search_resumes_from_its_state_file_to_the_same_result(tmp_path):
    adapter, model, graph, inputs, train, val = setup()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"bn": "calibrate"}

    def run(path, max_steps=None):
        model.load_state_dict(weights)
        slim, scorer = make_scorer(adapter, model, graph, train, val)
        try:
            return greedy_slimming(
                slim,
                FlopModel(model, graph, inputs),
                scorer,
                [0.5, 0.25],
                state_path=path,
                settings=settings,
                fingerprint=graph.fingerprint(),
                max_steps=max_steps,
                progress=False,
            )
        finally:
            slim.detach()

    whole = run(tmp_path / "whole.json")
    part = run(tmp_path / "part.json", max_steps=3)
    assert not part["done"] and len(part["history"]) == 3 and part["found"] == []
    on_disk = json.loads((tmp_path / "part.json").read_text())
    assert on_disk["config"] == part["config"] and len(on_disk["history"]) == 3
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary file
    part = run(tmp_path / "part.json", max_steps=2)  # a second piece
    assert len(part["history"]) == 5
    resumed = run(tmp_path / "part.json")
    assert resumed["done"]
    assert resumed["found"] == whole["found"] and resumed["history"] == whole["history"]
    assert json.loads((tmp_path / "part.json").read_text()) == json.loads((tmp_path / "whole.json").read_text())


def test_a_state_file_of_another_search_is_refused_by_field(tmp_path):
    adapter, model, graph, inputs, train, val = setup()
    slim, flops = Slimmable(model, graph), FlopModel(model, graph, inputs)
    score = lambda c: (float(sum(c.values())),)  # noqa: E731
    path = tmp_path / "s.json"
    greedy_slimming(
        slim,
        flops,
        score,
        [0.5],
        state_path=path,
        settings={"bins": 10},
        fingerprint="abc",
        progress=False,
        max_steps=1,
    )
    with pytest.raises(SearchStateError, match=r"s\.json: field 'settings\.bins' is 10 but this search asks for 5"):
        greedy_slimming(slim, flops, score, [0.5], state_path=path, settings={"bins": 5}, fingerprint="abc")
    with pytest.raises(SearchStateError, match=r"s\.json: field 'settings\.targets' is \[0\.5\]"):
        greedy_slimming(slim, flops, score, [0.4], state_path=path, settings={"bins": 10}, fingerprint="abc")
    with pytest.raises(SearchStateError, match=r"s\.json: field 'fingerprint' is 'abc'"):
        greedy_slimming(slim, flops, score, [0.5], state_path=path, settings={"bins": 10}, fingerprint="xyz")
    path.write_text('{"format": "detprune-autoslim-search/1", "config": ')
    with pytest.raises(SearchStateError, match=r"s\.json: cannot read the autoslim search state"):
        greedy_slimming(slim, flops, score, [0.5], state_path=path, settings={"bins": 10}, fingerprint="abc")


def test_search_leaves_bn_statistics_and_hooks_as_they_were():
    adapter, model, graph, inputs, train, val = setup()
    before = bn_state(model)
    ctx = PruneContext(example_inputs=inputs, adapter=adapter, train_loader=train, val_loader=val)
    pruner = AutoSlim(flops=0.5, score_batches=1, calib_batches=1, progress=False)
    pruner.plan(model, graph, ctx)
    assert not any(m._forward_hooks for m in model.modules())
    after = bn_state(model)
    kept = pruner.slim.keep_raw(pruner.slim.config)
    for (m0, v0, _), (m1, v1, _), rec in zip(before, after, [graph.records[n] for n in ("1", "4")]):
        drop = torch.from_numpy(~kept[rec.through])
        assert torch.equal(m0[drop], m1[drop]) and torch.equal(v0[drop], v1[drop])  # dropped: untouched
        assert not torch.equal(m0[~drop], m1[~drop])  # kept: calibrated at the chosen width


def test_plan_returns_the_first_channels_of_the_chosen_widths_and_resumes(tmp_path):
    adapter, model, graph, inputs, train, val = setup()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = PruneContext(
        example_inputs=inputs,
        adapter=adapter,
        train_loader=train,
        val_loader=val,
        options={"flops": "0.6,0.4", "state": str(tmp_path / "search.json")},
    )
    pruner = AutoSlim(score_batches=1, calib_batches=1, progress=False)
    with pytest.raises(DetpruneError, match=r"stopped after max_steps=2 steps; run again with state="):
        pruner.plan(model, graph, PruneContext(**{**ctx.__dict__, "options": {**ctx.options, "max_steps": 2}}))
    model.load_state_dict(weights)
    plan = pruner.plan(model, graph, ctx)
    assert plan.meta["pruner"] == "autoslim" and plan.meta["select"] == 0.4
    assert [f["target"] for f in plan.meta["found"]] == [0.6, 0.4]
    assert plan.meta["flops_fraction"] <= 0.4 and plan.meta["flops_counted"] <= 0.4 * count_flops(model, inputs)
    for kept in plan.kept.values():
        assert kept.tolist() == list(range(len(kept)))  # lower-index channels kept
    pruned = graph.apply(model, plan)
    assert count_flops(pruned, inputs) == plan.meta["flops_counted"]

    model.load_state_dict(weights)  # the same search from scratch, without a state file
    fresh = AutoSlim(score_batches=1, calib_batches=1, progress=False).plan(
        model, graph, PruneContext(**{**ctx.__dict__, "options": {"flops": [0.6, 0.4]}})
    )
    assert {g: t.tolist() for g, t in fresh.kept.items()} == {g: t.tolist() for g, t in plan.kept.items()}


def test_bad_options_are_clear_errors():
    adapter, model, graph, inputs, train, val = setup()
    with pytest.raises(DetpruneError, match=r"pruner 'autoslim' .* rejected its options \{'bogus': 1\}"):
        detprune.plugins().pruner("autoslim", bogus=1)
    ctx = PruneContext(example_inputs=inputs, adapter=adapter, train_loader=train, val_loader=val)
    with pytest.raises(
        DetpruneError, match=r"flops budgets must be fractions of the dense FLOPs in \(0, 1\], got '1.5'"
    ):
        AutoSlim(flops="1.5")
    with pytest.raises(DetpruneError, match=r"got '0.5,half'"):
        AutoSlim(flops="0.5,half")
    with pytest.raises(DetpruneError, match=r"bins must be an integer >= 1, got 0"):
        AutoSlim(bins=0)
    with pytest.raises(DetpruneError, match=r"flops budgets must be fractions .* got 1.5"):
        AutoSlim().plan(model, graph, PruneContext(**{**ctx.__dict__, "options": {"flops": 1.5}}))
    with pytest.raises(DetpruneError, match=r"select=0.3 is not one of the FLOPs budgets \[0.5\]"):
        AutoSlim(flops=0.5, select=0.3).plan(model, graph, ctx)
    with pytest.raises(DetpruneError, match=r"metric 'top1' needs a classifier"):
        Scorer(model, Slimmable(model, graph), type("D", (), {"task": "detection"})(), [object()], [], metric="top1")
    with pytest.raises(DetpruneError, match=r"bn must be one of calibrate, batch, got 'eval'"):
        AutoSlim(flops=0.5, bn="eval")

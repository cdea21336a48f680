"""The planner: ratios, round_to, min_keep, global ranking, constraints; and a property test on
random graphs (residual adds, concats, chunks, depthwise convs, channel shuffles)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from detprune.errors import GraphError
from detprune.graph import trace
from detprune.graph.planner import validate
from zoo import build, run, zero_removed


def _ranked(graph):
    """Scores = the channel number, so the lowest channels are the least important."""
    return {g.id: torch.arange(g.size, dtype=torch.float32) for g in graph.prunable_groups()}


def test_per_group_ratio_removes_the_lowest_scores():
    model, x = build("simple_cnn")
    graph = trace(model, x)
    plan = graph.plan(_ranked(graph), 0.25)
    for g in graph.prunable_groups():
        keep = math.floor(g.size * 0.75 + 0.5)
        assert plan.kept[g.id].tolist() == list(range(g.size - keep, g.size))


def test_round_to_and_min_keep():
    model, x = build("simple_cnn")
    graph = trace(model, x)
    plan = graph.plan(_ranked(graph), 0.7, round_to=4)
    assert {g.size: len(plan.kept[g.id]) for g in graph.prunable_groups()} == {8: 4, 16: 8}
    plan = graph.plan(_ranked(graph), 0.9, min_keep=0.5)
    assert all(len(plan.kept[g.id]) == g.size // 2 for g in graph.prunable_groups())
    assert graph.plan(_ranked(graph), 0.0).kept == {}


def test_global_ranking_uses_one_threshold():
    model, x = build("simple_cnn")
    graph = trace(model, x)
    groups = graph.prunable_groups()
    low, high = groups[0], groups[1]
    scores = {g.id: torch.full((g.size,), 10.0) for g in groups}
    scores[low.id] = torch.linspace(0, 1, low.size)  # clearly the least important channels
    total = sum(g.size for g in groups)
    plan = graph.plan(scores, 0.15, global_ranking=True)
    removed = {g.id: g.size - len(plan.kept.get(g.id, range(g.size))) for g in groups}
    assert low.size == 8 and removed[low.id] == round(0.15 * total) == 6 and removed[high.id] == 0
    plan = graph.plan(scores, 0.2, global_ranking=True, round_to=4)
    assert len(plan.kept[low.id]) % 4 == 0


def test_bad_arguments_are_clear():
    model, x = build("simple_cnn")
    graph = trace(model, x)
    with pytest.raises(GraphError, match=r"ratio is the fraction of channels removed and must be in \[0, 1\), got 1.5"):
        graph.plan(_ranked(graph), 1.5)
    g = graph.prunable_groups()[0]
    with pytest.raises(GraphError, match=rf"scores for group {g.id} have 3 values, the group has {g.size} channels"):
        graph.plan({g.id: torch.ones(3)}, 0.5)
    with pytest.raises(GraphError, match=r"contain NaN"):
        graph.plan({g.id: torch.full((g.size,), float("nan"))}, 0.5)


def test_chunk_and_nested_shuffle_constraints_hold():
    for name in ("yolo_c2f_spp", "shuffle"):
        model, x = build(name)
        graph = trace(model, x)
        torch.manual_seed(1)
        scores = {g.id: torch.rand(g.size) for g in graph.prunable_groups()}
        plan = graph.plan(scores, 0.5)
        validate(graph, plan)
        for g in graph.groups:
            for _, blocks in g.blocks:
                keep = torch.zeros(g.size, dtype=torch.bool)
                keep[plan.kept.get(g.id, torch.arange(g.size))] = True
                assert len({int(keep[b].sum()) for b in blocks}) == 1
    stream = next(g for g in graph.groups if "stem.0" in g.modules("out"))
    assert stream.id in plan.kept  # the shuffled stream is pruned (solved as an integer program)


# ---- property test on random graphs ------------------------------------------------------------
OPS = st.sampled_from(["conv", "add", "cat", "chunk", "dw", "shuffle", "mul"])


class RandomNet(nn.Module):
    """Runs a drawn program: each step makes a tensor from earlier ones (all at one resolution)."""

    def __init__(self, program, widths):
        super().__init__()
        self.program = program
        self.convs = nn.ModuleDict()
        c = [4]
        for k, (op, a, _b, w) in enumerate(program):
            if op == "conv":
                self.convs[str(k)] = nn.Sequential(nn.Conv2d(c[a], w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
                c.append(w)
            elif op == "dw":
                self.convs[str(k)] = nn.Sequential(
                    nn.Conv2d(c[a], c[a], 3, padding=1, groups=c[a]), nn.BatchNorm2d(c[a])
                )
                c.append(c[a])
            else:
                c.append(widths[k + 1])
        self.head = nn.Conv2d(c[-1], 3, 1)

    def forward(self, x):
        ts = [x]
        for k, (op, a, b, _) in enumerate(self.program):
            t = ts[a]
            if op in ("conv", "dw"):
                t = self.convs[str(k)](t)
            elif op == "add":
                t = t + ts[b]
            elif op == "mul":
                t = t * torch.sigmoid(ts[b])
            elif op == "cat":
                t = torch.cat([t, ts[b]], 1)
            elif op == "chunk":
                t = t.chunk(2, 1)[b % 2]
            elif op == "shuffle":
                n, ch, h, w = t.shape
                t = t.view(n, 2, ch // 2, h, w).transpose(1, 2).reshape(n, ch, h, w)
            ts.append(t)
        return self.head(ts[-1])


@st.composite
def programs(draw):
    first = draw(st.sampled_from([4, 6, 8]))
    widths, program = [4, first], [("conv", 0, 0, first)]
    for _ in range(draw(st.integers(1, 7))):
        op = draw(OPS)
        a = draw(st.integers(0, len(widths) - 1))
        if op == "conv":
            w = draw(st.sampled_from([2, 4, 6, 8]))
            program.append(("conv", a, 0, w))
            widths.append(w)  # noqa: E702
        elif op == "dw" and a > 0:
            program.append(("dw", a, 0, 0))
            widths.append(widths[a])  # noqa: E702
        elif op in ("add", "mul"):
            same = [j for j, w in enumerate(widths) if w == widths[a] and j > 0]
            if a > 0 and same:
                program.append((op, a, draw(st.sampled_from(same)), 0))
                widths.append(widths[a])  # noqa: E702
        elif op == "cat" and a > 0:
            b = draw(st.integers(1, len(widths) - 1))
            program.append(("cat", a, b, 0))
            widths.append(widths[a] + widths[b])  # noqa: E702
        elif op in ("chunk", "shuffle") and a > 0 and widths[a] % 2 == 0 and widths[a] >= 4:
            program.append((op, a, draw(st.integers(0, 1)), 0))
            widths.append(widths[a] // 2 if op == "chunk" else widths[a])
    return program, widths


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.floats(0.1, 0.9), st.integers(0, 2**16))
def test_random_graphs_prune_equivalently(drawn, ratio, seed):
    program, widths = drawn
    torch.manual_seed(seed)
    try:
        model = RandomNet(program, widths).double().eval()
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        model(x)
    except RuntimeError:
        return  # the drawn program is not a valid network (widths did not line up)
    graph = trace(model, x)
    scores = {g.id: torch.rand(g.size) for g in graph.prunable_groups()}
    plan = graph.plan(scores, ratio)
    validate(graph, plan)
    assert torch.equal(run(model, (x,))[0], run(graph.apply(model, type(plan)({})), (x,))[0])
    zeroed = copy.deepcopy(model)
    zero_removed(zeroed, graph, plan)
    pruned = graph.apply(zeroed, plan)
    ref, got = run(zeroed, (x,))[0], run(pruned, (x,))[0]
    assert ref.shape == got.shape
    assert (ref - got).abs().max().item() <= 1e-9 * max(1.0, ref.abs().max().item())

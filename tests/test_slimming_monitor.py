"""γ monitoring for Network Slimming: sparsity training through the real Trainer pushes |γ| down,
the per-epoch history (histogram, share under 1e-2, sorted curve) is checkpointed and restored on
resume, and ``pruner.plot`` draws it with the target ratio's threshold marked."""

from __future__ import annotations

import pytest
import torch
from test_train_support import TinyAdapter, colour_dataset
from torch import nn

import detprune
from detprune.graph import trace
from detprune.plugin.context import PruneContext
from detprune.training.checkpoint import load_checkpoint
from detprune.training.distributed import make_loader
from detprune.training.trainer import Trainer
from detprune_plugins.slimming import monitor

FAST = dict(lr=0.05, warmup_epochs=0.0, progress=False, device="cpu")
PNG = b"\x89PNG\r\n\x1a\n"


def test_snapshot_counts_share_quantiles_and_threshold():
    v = torch.tensor([1e-4, 5e-3, 2e-2, 0.1, 0.5, 1.0, 2.0, 20.0])
    snap = monitor.snapshot(v, ratio=0.25)
    assert snap["n"] == 8 and snap["share_small"] == pytest.approx(2 / 8)
    assert sum(snap["hist"]) == 8 and len(snap["hist"]) == len(monitor.EDGES) - 1
    assert snap["hist"][-1] == 1  # 20 is clipped into the last bin, never dropped
    assert snap["quantiles"][0] == pytest.approx(1e-4) and snap["quantiles"][-1] == pytest.approx(20.0)
    assert snap["threshold"] == pytest.approx(5e-3)  # 2 of 8 go
    assert "25.0% of 8 prunable |γ| < 0.01" in monitor.describe(snap, "epoch 1")


def _loaders():
    return (
        make_loader(colour_dataset(48, 1), 8, train=True, seed=0),
        make_loader(colour_dataset(16, 2), 8, train=False),
    )


def test_sparsity_training_shrinks_gamma_and_history_survives_resume(tmp_path, caplog):
    adapter = TinyAdapter()
    model = adapter.build()
    graph = trace(model, adapter.example_inputs(1), protected=tuple(adapter.protected(model)))
    pruner = detprune.plugins().pruner("slimming", s=1.0, ratio=0.5).attach(graph)
    train, val = _loaders()
    with caplog.at_level("INFO", logger="detprune.slimming"):
        Trainer(model, adapter, train, val, epochs=3, out_dir=tmp_path, pruner=pruner, **FAST).fit()
    assert [h["epoch"] for h in pruner.history] == [0, 1, 2]
    assert all(h["n"] == 24 for h in pruner.history)  # 8 + 16 BN channels, the classifier has none
    medians = [h["median"] for h in pruner.history]  # BN γ start at 1; the L1 pull drags them down
    assert medians[-1] < 0.3 and medians[-1] < medians[0]
    assert "slimming epoch 3:" in caplog.text and "ratio 0.5 would cut at" in caplog.text
    saved = load_checkpoint(tmp_path / "last.pt")["pruner"]  # weights_only load of plain containers
    assert saved["history"] == pruner.history

    again = detprune.plugins().pruner("slimming", s=1.0).attach(graph)
    Trainer(model, adapter, train, val, epochs=4, out_dir=tmp_path, pruner=again, **FAST).fit(resume=True)
    assert [h["epoch"] for h in again.history] == [0, 1, 2, 3]
    assert again.history[:3] == pruner.history and again.ratio == 0.5

    plan = again.plan(model, graph, PruneContext(ratio=0.5))
    path = again.plot(tmp_path / "plots")
    assert path == tmp_path / "plots" / "gamma.png" and path.read_bytes()[:8] == PNG
    assert plan.meta["achieved_ratio"] > 0 and again.at_plan["threshold"] == plan.meta["threshold"]


def test_plot_without_any_record_writes_nothing(tmp_path):
    assert detprune.plugins().pruner("slimming").plot(tmp_path) is None
    assert not any(tmp_path.iterdir())


def test_plot_after_a_plan_without_training_shows_the_distribution_at_pruning(tmp_path):
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    graph = trace(m, (torch.rand(1, 3, 4, 4),))
    pruner = detprune.plugins().pruner("slimming")
    pruner.plan(m, graph, PruneContext(ratio=0.25))
    assert pruner.plot(tmp_path).read_bytes()[:8] == PNG

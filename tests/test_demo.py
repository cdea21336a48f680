"""``detprune demo``: the table, the cache key, side-by-side latency, and (slow) the quick demo end to
end through the console script, twice, the second run reusing the cached dense model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from detprune.eval.measure import side_by_side_latency
from detprune.pipeline import demo


def test_cache_key_follows_the_dense_training_only():
    assert demo.FULL.key() == replace(demo.FULL, ratio=0.3, finetune_epochs=9, alpha=0.5).key()
    assert demo.FULL.key() != replace(demo.FULL, dense_epochs=demo.FULL.dense_epochs + 1).key()
    assert demo.FULL.key() != replace(demo.FULL, width=0.5).key() != demo.QUICK.key()


def test_side_by_side_latency_measures_every_model_in_rounds():
    models = {"big": nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 3)), "small": nn.Conv2d(3, 4, 3)}
    lat = side_by_side_latency(models, (torch.rand(1, 3, 32, 32),), rounds=2, iters=3)
    assert set(lat) == {"big", "small"} and all(v > 0 for v in lat.values())


def test_table_shows_kept_fractions_and_where_the_dense_model_came_from():
    rows = [
        {"name": "dense", "params": 1000, "flops": 4000, "latency_ms": 2.0, "map50": 0.5},
        {"name": "NS", "params": 400, "flops": 2000, "latency_ms": 1.5, "map50": 0.4, "map50_before_finetune": 0.1},
        {
            "name": "NS+sketch",
            "params": 250,
            "flops": 1000,
            "latency_ms": 1.0,
            "map50": 0.45,
            "map50_before_finetune": 0.2,
        },
    ]
    text = demo.table(
        {
            "rows": rows,
            "dense_model_reused": True,
            "dense_model": "/c/dense.pt",
            "device": "cpu",
            "seconds": 12.0,
            "runs": {"NS": "o/ns", "NS+sketch": "o/ns-sketch"},
        }
    )
    lines = text.splitlines()
    assert lines[1].split() == ["dense", "1,000", "4,000", "2.00", "0.5000"]
    assert lines[3].split() == ["NS+sketch", "250", "(25%)", "1,000", "(25%)", "1.00", "(50%)", "0.4500", "0.2000"]
    assert "dense model: reused from the cache (/c/dense.pt)" in lines[4]


def test_demo_refuses_to_run_without_its_plugins(monkeypatch, tmp_path):
    import detprune
    from detprune.errors import DetpruneError

    host = detprune.plugins()
    monkeypatch.setattr(host, "names", lambda kind: [])
    with pytest.raises(DetpruneError, match=r"^the demo needs pruner 'slimming' and compensator 'sketch'; "):
        demo.run_demo(demo.QUICK, out=tmp_path)


@pytest.mark.slow
def test_quick_demo_json_end_to_end_and_the_second_run_reuses_the_dense_model(tmp_path):
    env = {**os.environ, "DETPRUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    cmd = [
        sys.executable,
        "-m",
        "detprune.cli",
        "demo",
        "--json",
        "--quick",
        "--no-progress",
        "--out",
        str(tmp_path / "o"),
    ]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads(first.stdout)
    assert [r["name"] for r in result["rows"]] == ["dense", "NS", "NS+sketch"]
    for row in result["rows"]:
        assert {"name", "params", "flops", "latency_ms", "map50"} <= set(row)
        assert row["params"] > 0 and row["flops"] > 0 and row["latency_ms"] > 0 and 0.0 <= row["map50"] <= 1.0
    dense, ns, sketch = result["rows"]
    assert sketch["params"] <= 0.5 * dense["params"] and ns["params"] < dense["params"]
    assert result["dense_model_reused"] is False and "training the dense YOLOv3" in first.stderr
    for run in result["runs"].values():
        report = json.loads((tmp_path / "o" / os.path.basename(run) / "report.json").read_text())
        assert report["pruner"] == "slimming"
    assert json.loads((tmp_path / "o" / "ns-sketch" / "report.json").read_text())["compensators"] == ["sketch"]

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(second.stdout)
    assert again["dense_model_reused"] is True and "reusing the dense model" in second.stderr
    assert again["rows"][0]["params"] == dense["params"] and again["rows"][0]["map50"] == dense["map50"]
    # what `detprune eval --weights pruned.pt` scores is what the report says (anchors, width, depth from the recipe)
    for folder in ("ns", "ns-sketch"):
        report = json.loads((tmp_path / "o" / folder / "report.json").read_text())
        scored = subprocess.run(
            [
                sys.executable,
                "-m",
                "detprune.cli",
                "eval",
                "--model",
                "yolov3",
                "--weights",
                str(tmp_path / "o" / folder / "pruned.pt"),
                "--data",
                report["data"]["card"],
                "--json",
                "--device",
                "cpu",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert scored.returncode == 0, scored.stderr[-2000:]
        metrics = json.loads(scored.stdout)
        assert metrics["detections"] == report["pruned"]["metrics"]["detections"]
        assert metrics["map50"] == pytest.approx(report["pruned"]["metrics"]["map50"], abs=1e-6)

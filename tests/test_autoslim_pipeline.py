"""AutoSlim through ``detprune prune``'s trip: sandwich training in the method phase, greedy slimming
in ``plan``, surgery, fine-tuning, a loadable pruned model within the FLOPs budget."""

from __future__ import annotations

import json

import pytest
import torch

import detprune
from conftest import make_colour_folder
from detprune.eval.measure import count_flops
from detprune.pipeline.trip import PipelineConfig, run


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with two classes of 32x32 PNGs: red-ish or blue-ish noise."""
    return make_colour_folder(tmp_path_factory.mktemp("cls"), {"train": 32, "val": 16})


def test_autoslim_in_the_prune_pipeline_meets_its_flops_budget(folder, tmp_path):
    out = tmp_path / "run"
    res = run(
        PipelineConfig(
            model="vgg16-cifar",
            width=0.125,
            data=folder,
            out=out,
            pruner="autoslim",
            ratio=0.6,
            prune_epochs=2,
            finetune_epochs=1,
            batch_size=8,
            device="cpu",
            latency_iters=2,
            latency_warmup=1,
            progress=False,
            pruner_options={
                "score_batches": 1,
                "calib_batches": 2,
                "progress": False,
                "state": str(tmp_path / "search.json"),
            },
        )
    )
    report = json.loads((out / "report.json").read_text())
    assert report["pruner"] == "autoslim"
    meta = report["plan"]["meta"]
    assert meta["pruner"] == "autoslim" and meta["sandwich_steps"] == 2 * 4  # 32 images / 8 per batch, 2 epochs
    assert [f["target"] for f in meta["found"]] == [pytest.approx(0.4)]
    inputs = torch.rand(1, 3, 32, 32)
    dense = detprune.plugins().adapter("vgg16-cifar", width=0.125).build()
    assert count_flops(res.model, inputs) <= 0.4 * count_flops(dense, inputs)
    assert json.loads((tmp_path / "search.json").read_text())["done"]
    reloaded = detprune.load(out / "pruned.pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(inputs), res.model.eval()(inputs))

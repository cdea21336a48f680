"""detprune.pipeline.trip end to end on a tiny classifier and a tiny YOLOv3: the run folder, the report's
documented keys, pruned.pt reproducing the pruned model through detprune.load and `detprune eval`,
pruning a pruned model again, plugin callbacks and compensator chains, and flag errors."""

from __future__ import annotations

import json
import types

import pytest
import torch

import detprune
from conftest import make_colour_folder
from detprune.errors import DetpruneError
from detprune.eval.measure import count_params
from detprune.pipeline.trip import PipelineConfig, run

REPORT_KEYS = {
    "format",
    "model",
    "adapter_args",
    "task",
    "data",
    "pruner",
    "pruner_options",
    "criterion",
    "ratio",
    "compensators",
    "compensator_options",
    "device",
    "metric",
    "dense",
    "pruned",
    "before_finetune",
    "kept",
    "plan",
    "layers",
    "compensation",
    "training",
    "timings_s",
    "files",
    "config",
    "detprune_version",
}
STATS_KEYS = {"params", "flops", "latency_ms", "latency", "metrics"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with two classes of 32x32 PNGs: red-ish or blue-ish noise."""
    return make_colour_folder(tmp_path_factory.mktemp("cls"), {"train": 16, "val": 8})


@pytest.fixture(scope="module")
def drones(tmp_path_factory):
    """A VisDrone-format folder with train (6 images) and val (3 images) synthetic scenes."""
    from detprune.data.synthetic import generate

    root = tmp_path_factory.mktemp("drones")
    generate(root / "train", 6, seed=0, progress=False)
    generate(root / "val", 3, seed=1, progress=False)
    return root


@pytest.fixture
def recorder_plugins():
    """An in-process plugin: a pruner with training callbacks and a compensator that records its calls."""
    calls: list = []

    class CountingPruner:
        """Counts callback calls, then plans like oneshot."""

        def __init__(self, s: float = 0.0):
            self.s, self.backward, self.epochs = s, 0, []

        def on_after_backward(self, model):
            self.backward += 1
            calls.append(("backward", self.s))

        def on_epoch_end(self, model, epoch):
            self.epochs.append(epoch)

        def plan(self, model, graph, ctx):
            calls.append(("plan", self.backward, list(self.epochs)))
            return detprune.plugins().pruner("oneshot").plan(model, graph, ctx)

    def recorder(tag):
        class Recorder:
            """Records the order and context of compensate() calls."""

            def __init__(self, alpha: float = 0.3):
                self.alpha = alpha
                self.report = {"tag": tag, "alpha": alpha}

            def compensate(self, original, pruned, plan, ctx):
                calls.append(
                    (
                        tag,
                        self.alpha,
                        ctx.graph is not None,
                        ctx.train_loader is not None,
                        count_params(pruned) < count_params(original),
                    )
                )

        return Recorder

    class NoAlpha:
        """A compensator without options."""

        def compensate(self, original, pruned, plan, ctx):
            calls.append(("noalpha",))

    plugin = types.SimpleNamespace(
        detprune_pruners=detprune.hookimpl(lambda: {"test-counting": CountingPruner}),
        detprune_compensators=detprune.hookimpl(
            lambda: {"test-rec-a": recorder("a"), "test-rec-b": recorder("b"), "test-noalpha": NoAlpha}
        ),
    )
    detprune.plugins().register(plugin, name="test-pipeline-plugins")
    yield calls
    detprune.plugins(reload=True)


def cls_config(folder, out, **kw):
    base = dict(
        model="vgg16-cifar",
        width=0.125,
        data=folder,
        out=out,
        ratio=0.5,
        batch_size=8,
        device="cpu",
        latency_iters=2,
        latency_warmup=1,
        progress=False,
    )
    return PipelineConfig(**{**base, **kw})


def test_classifier_trip_writes_a_loadable_pruned_model_and_the_report(folder, tmp_path, capsys):
    out = tmp_path / "run"
    res = run(cls_config(folder, out, epochs_dense=1, finetune_epochs=1))
    assert {p.name for p in out.iterdir()} >= {"pruned.pt", "report.json", "report.md", "widths.png", "train"}
    report = json.loads((out / "report.json").read_text())
    assert set(report) == REPORT_KEYS and report == res.report
    assert set(report["dense"]) == STATS_KEYS == set(report["pruned"])
    assert report["metric"] == "top1" and 0.0 <= report["pruned"]["metrics"]["top1"] <= 1.0
    assert report["pruned"]["params"] == count_params(res.model) < report["dense"]["params"]
    assert report["kept"]["params"] == pytest.approx(report["pruned"]["params"] / report["dense"]["params"])
    assert report["training"]["dense"]["epochs"] == 1 and report["training"]["finetune"]["epochs"] == 1
    assert report["before_finetune"]["top1"] is not None
    # every conv keeps round(c * 0.5) filters; the protected classifier keeps its 2 outputs
    convs = [r for r in report["layers"] if r["kind"] == "Conv2d"]
    assert len(convs) == 13 and all(r["after"] == round(r["before"] * 0.5) for r in convs)
    assert [r["after"] for r in report["layers"] if r["kind"] == "Linear"] == [2]
    assert report["plan"]["achieved_ratio"] == pytest.approx(0.5, abs=0.02)
    assert report["plan"]["meta"]["pruner"] == "oneshot" and report["plan"]["meta"]["criterion"] == "l1"
    md = (out / "report.md").read_text()
    assert "| dense |" in md and "| pruned |" in md and "## Layer widths" in md

    # pruned.pt rebuilds the very model the run ended with
    loaded = detprune.load(out / "pruned.pt")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), res.model.eval()(x), rtol=0, atol=1e-6)
    # ... and `detprune eval --weights DIR/pruned.pt` scores what the report says
    from detprune.cli import main

    assert (
        main(
            [
                "eval",
                "--model",
                "vgg16-cifar",
                "--weights",
                str(out / "pruned.pt"),
                "--data",
                str(folder),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    scored = json.loads(capsys.readouterr().out)
    assert scored["top1"] == pytest.approx(report["pruned"]["metrics"]["top1"])


def test_tiny_yolov3_trip_on_visdrone_format_data(drones, tmp_path):
    out = tmp_path / "y3"
    res = run(
        PipelineConfig(
            model="yolov3",
            data=drones,
            out=out,
            width=0.0625,
            model_args={"depth": 0.34},
            img_size=64,
            ratio=0.3,
            finetune_epochs=1,
            batch_size=3,
            device="cpu",
            optimizer="adamw",
            latency_iters=2,
            latency_warmup=1,
            progress=False,
            iou_range=False,
        )
    )
    r = res.report
    assert r["metric"] == "map50" and r["task"] == "detection"
    assert {"map50", "map50_500", "per_class"} <= set(r["pruned"]["metrics"])
    assert r["data"]["train_images"] == 6 and r["data"]["val_images"] == 3
    widths = {row["module"]: row for row in r["layers"]}
    for name in res.dense.output_layers:  # the protected output convs keep 3 * (5 + 10) channels
        assert widths[f"layers.{name}.conv"]["after"] == widths[f"layers.{name}.conv"]["before"] == 45
    assert r["pruned"]["flops"] < r["dense"]["flops"]
    loaded = detprune.load(out / "pruned.pt").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), res.model.eval()(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_pruned_model_is_pruned_again_from_its_recipe(folder, tmp_path):
    first = run(cls_config(folder, tmp_path / "one", ratio=0.5))
    second = run(cls_config(folder, tmp_path / "two", weights=tmp_path / "one" / "pruned.pt", ratio=0.5))
    assert second.report["dense"]["params"] == first.report["pruned"]["params"]
    assert second.report["pruned"]["params"] < first.report["pruned"]["params"]
    loaded = detprune.load(tmp_path / "two" / "pruned.pt")  # rebuilt through the first recipe
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), second.model.eval()(x), rtol=0, atol=1e-6)


def test_method_phase_runs_the_pruner_callbacks_and_compensators_chain_in_order(folder, tmp_path, recorder_plugins):
    res = run(
        cls_config(
            folder,
            tmp_path / "m",
            pruner="test-counting",
            sparsity=1e-3,
            sparsity_epochs=2,
            compensators=["test-rec-b", "test-noalpha", "test-rec-a"],
            alpha=0.2,
        )
    )
    steps = 2 * 2  # 16 training images, batch 8, two epochs
    assert recorder_plugins[:steps] == [("backward", 1e-3)] * steps
    assert recorder_plugins[steps] == ("plan", steps, [0, 1])
    assert recorder_plugins[steps + 1 :] == [("b", 0.2, True, True, True), ("noalpha",), ("a", 0.2, True, True, True)]
    assert res.report["compensation"] == {
        "test-rec-b": {"tag": "b", "alpha": 0.2},
        "test-noalpha": None,
        "test-rec-a": {"tag": "a", "alpha": 0.2},
    }
    assert res.report["compensator_options"] == {
        "test-rec-b": {"alpha": 0.2},
        "test-noalpha": {},
        "test-rec-a": {"alpha": 0.2},
    }
    assert res.report["pruner_options"] == {"s": 1e-3} and res.report["training"]["method"]["epochs"] == 2


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(shortcut="sketch"),
            "pruner 'oneshot' takes no option 'shortcut' (--shortcut sketch); its options: "
            "criterion, criterion_options, global_ranking, min_keep",
        ),
        (
            dict(sparsity=1e-4, sparsity_epochs=1),
            "pruner 'oneshot' takes no option 's' (--sparsity 0.0001); its "
            "options: criterion, criterion_options, global_ranking, min_keep",
        ),
        (dict(sparsity=1e-4), "--sparsity has no effect without --sparsity-epochs E (the sparsity-training phase)"),
        (dict(alpha=0.3), "--alpha is a compensator option; add --compensator sketch"),
        (dict(ratio=1.0), "--ratio must be in [0, 1), the fraction of channels removed; got 1.0"),
        (
            dict(epochs_dense=1, weights="w.pt"),
            "--epochs-dense trains the dense model from scratch; it cannot be "
            "combined with --weights (use --prune-epochs / --finetune-epochs to train further)",
        ),
        (
            dict(sparsity_epochs=2, prune_epochs=3),
            "--sparsity-epochs 2 and --prune-epochs 3 name the same phase; give one of them",
        ),
        (dict(weights="missing.pt"), "missing.pt: weights file not found"),
    ],
)
def test_flag_errors_name_the_flag(folder, tmp_path, kw, message):
    with pytest.raises(DetpruneError) as err:
        run(cls_config(folder, tmp_path / "e", **kw))
    assert str(err.value) == message


def test_compensator_option_no_compensator_takes_is_an_error(folder, tmp_path, recorder_plugins):
    with pytest.raises(
        DetpruneError, match=r"^no chosen compensator \(test-noalpha\) takes option 'alpha' \(--alpha\)$"
    ):
        run(cls_config(folder, tmp_path / "e", compensators=["test-noalpha"], alpha=0.3))


def test_a_folder_holding_a_run_is_refused_unless_overwrite(folder, tmp_path):
    run(cls_config(folder, tmp_path / "r"))
    with pytest.raises(DetpruneError) as err:
        run(cls_config(folder, tmp_path / "r"))
    assert str(err.value) == (
        f"{tmp_path / 'r'} already holds a prune run (pruned.pt, report.json, report.md, "
        "widths.png); choose another --out or pass --overwrite"
    )
    (tmp_path / "r" / "mine.txt").write_text("kept")
    run(cls_config(folder, tmp_path / "r", overwrite=True, ratio=0.25))
    assert (tmp_path / "r" / "mine.txt").read_text() == "kept"
    assert json.loads((tmp_path / "r" / "report.json").read_text())["ratio"] == 0.25


def test_criterion_for_a_pruner_that_takes_none_is_an_error(folder, tmp_path):
    with pytest.raises(
        DetpruneError,
        match=r"^pruner 'slimming' takes no option 'criterion' \(--criterion l1\); "
        r"its options: .*shortcut",
    ):
        run(cls_config(folder, tmp_path / "e", pruner="slimming", criterion="l1"))


def test_no_progress_reaches_the_plugins(folder, tmp_path, capsys):
    """``progress`` of the run reaches the compensators through the context: the sketch's own BN-statistics bar
    shows with it and stays silent without it."""
    for progress in (True, False):
        capsys.readouterr()
        run(
            cls_config(
                folder,
                tmp_path / f"p{progress}",
                pruner="slimming",
                ratio=0.6,
                compensators=["sketch"],
                alpha=0.0,
                progress=progress,
                plots=False,
            )
        )
        assert ("sketch: BN statistics" in capsys.readouterr().err) is progress

"""Weights files are read with the build arguments they record: ``eval`` of a pruned.pt scores what
the prune report says; contradicting flags, models and class counts are one-line errors; a state_dict
that does not fit names the first tensors and the likely cause."""

from __future__ import annotations

import json

import pytest
import torch

import detprune
from detprune.cli import main
from detprune.data import load_card
from detprune.data.synthetic import generate
from detprune.errors import DetpruneError
from detprune.pipeline.weights import open_model

SMALL = {"width": 0.0625, "depth": 0.34}
ANCHORS = [
    [3.0, 4.0],
    [5.0, 3.0],
    [6.0, 8.0],
    [9.0, 5.0],
    [8.0, 12.0],
    [14.0, 9.0],
    [12.0, 20.0],
    [22.0, 14.0],
    [30.0, 30.0],
]


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    generate(root / "train", 8, seed=3, progress=False)
    generate(root / "val", 4, seed=4, progress=False)
    path = root / "card.yaml"
    path.write_text(
        "name: syn\ntask: detection\nformat: visdrone\nroot: .\nsplits: {train: train, val: val}\n"
        "classes: [pedestrian, people, bicycle, car, van, truck, tricycle, awning-tricycle, bus, motor]\n"
        "ignore: [0, 11]\nimg_size: 96\n"
    )
    return path


@pytest.fixture(scope="module")
def run(card, tmp_path_factory):
    """A prune run of a small YOLOv3 with its own anchors, width and depth (none of them defaults),
    started from a checkpoint whose objectness bias is raised so that it detects (untrained, it would not)."""
    tmp = tmp_path_factory.mktemp("run")
    args = {"num_classes": 10, "img_size": 96, **SMALL, "anchors": ANCHORS}
    model = detprune.plugins().adapter("yolov3", **args).build()
    with torch.no_grad():
        for i in model.output_layers:
            bias = model.layers[str(i)].conv.bias.view(3, -1)
            bias[:, 4:] = 4.0  # objectness and classes
    torch.save({"model": model.state_dict(), "meta": {"model": "yolov3", "adapter_args": args}}, tmp / "dense.pt")
    out = tmp / "y3"
    assert (
        main(
            [
                "prune",
                "--model",
                "yolov3",
                "--weights",
                str(tmp / "dense.pt"),
                "--data",
                str(card),
                "--ratio",
                "0.3",
                "--out",
                str(out),
                "--latency-iters",
                "1",
                "--no-plots",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return out


def test_eval_of_pruned_pt_equals_the_report(run, card, capsys):
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                "yolov3",
                "--weights",
                str(run / "pruned.pt"),
                "--data",
                str(card),
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    scored = json.loads(capsys.readouterr().out)
    report = json.loads((run / "report.json").read_text())
    assert scored["detections"] == report["pruned"]["metrics"]["detections"] > 0
    for key in ("map50", "map50_500"):
        assert scored[key] == pytest.approx(report["pruned"]["metrics"][key], abs=1e-6)


def test_the_recipe_gives_the_adapter_its_recorded_args(run, card):
    loaded = open_model("yolov3", load_card(card), run / "pruned.pt")
    assert loaded.source == "recipe"
    assert loaded.adapter.args["anchors"] == ANCHORS
    assert loaded.adapter.args["width"] == SMALL["width"] and loaded.adapter.args["depth"] == SMALL["depth"]
    resized = open_model("yolov3", load_card(card), run / "pruned.pt", img_size=192)
    assert resized.adapter.args["img_size"] == 192 and resized.adapter.args["anchors"][0] == [6.0, 8.0]


def test_a_finetune_checkpoint_rebuilds_the_pruned_model(run, card):
    ckpt = run / "ft"
    assert (
        main(
            [
                "train",
                "--model",
                "yolov3",
                "--data",
                str(card),
                "--weights",
                str(run / "pruned.pt"),
                "--epochs",
                "1",
                "--out",
                str(ckpt),
                "--workers",
                "0",
                "--device",
                "cpu",
                "--no-progress",
                "--val-split",
                "none",
            ]
        )
        == 0
    )
    loaded = open_model("yolov3", load_card(card), ckpt / "last.pt")
    reference = detprune.load(run / "pruned.pt")
    assert loaded.source == "checkpoint" and loaded.adapter.args["anchors"] == ANCHORS
    assert [p.shape for p in loaded.model.parameters()] == [p.shape for p in reference.parameters()]


def test_a_recipe_with_another_model_or_class_count_is_refused(run, card, tmp_path):
    with pytest.raises(
        DetpruneError,
        match=rf"^{run / 'pruned.pt'} holds a 'yolov3' model, not "
        r"'centernet-resnet18' \(--model\); pass --model yolov3$",
    ):
        open_model("centernet-resnet18", load_card(card), run / "pruned.pt")
    three = tmp_path / "three.yaml"
    three.write_text(
        card.read_text()
        .replace(
            "classes: [pedestrian, people, bicycle, car, van, truck, tricycle, awning-tricycle, bus, motor]",
            "classes: [a, b, c]",
        )
        .replace("root: .", f"root: {card.parent}")
    )
    with pytest.raises(
        DetpruneError,
        match=r"pruned.pt: the model predicts 10 classes, but .*three.yaml has 3 \(a, b, c\); "
        r"use the dataset it was trained on$",
    ):
        open_model("yolov3", load_card(three), run / "pruned.pt")
    with pytest.raises(
        DetpruneError, match=r"pruned.pt was built with width=0.0625; the option width=0.25 contradicts it"
    ):
        open_model("yolov3", load_card(card), run / "pruned.pt", overrides={"width": 0.25})


def _state(tmp_path, name, **args):
    model = detprune.plugins().adapter("yolov3", img_size=64, **args).build()
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "saved, asked, cause",
    [
        (
            {"width": 0.0625, "depth": 0.34},
            {"width": 0.125, "depth": 0.34},
            "another width: the file's layers are 0.5x as wide as this model's (adjust --width)",
        ),
        ({"width": 0.0625, "depth": 0.34}, {"width": 0.0625, "depth": 0.67}, "another depth or model family"),
        (
            {"width": 0.0625, "depth": 0.34, "num_classes": 3},
            {"width": 0.0625, "depth": 0.34},
            "another number of classes (only the output layers differ)",
        ),
    ],
)
def test_a_mismatched_state_dict_names_tensors_and_cause(card, tmp_path, saved, asked, cause):
    path = _state(tmp_path, "w.pt", **saved)
    with pytest.raises(DetpruneError) as err:
        open_model("yolov3", load_card(card), path, overrides=asked)
    text = str(err.value)
    assert (
        text.startswith(f"{path}: weights do not fit model 'yolov3' built with ") and f"Likely cause: {cause}" in text
    )
    assert "\n" not in text

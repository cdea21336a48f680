"""``detprune train`` end to end on a tiny image-folder dataset: the run folder, --resume to more
epochs, fine-tuning a smaller model from --weights, and one-line errors."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import REPO, make_colour_folder
from detprune.cli import main
from detprune.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with two classes of 32x32 PNGs: red-ish or blue-ish noise."""
    return make_colour_folder(tmp_path_factory.mktemp("cls"), {"train": 16, "val": 8})


def train(folder, out, *extra):
    return main(
        [
            "train",
            "--model",
            "vgg16-cifar",
            "--width",
            "0.125",
            "--data",
            str(folder),
            "--out",
            str(out),
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            "--lr",
            "0.02",
            *extra,
        ]
    )


def test_train_writes_the_run_folder_and_resumes_to_more_epochs(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(folder, out, "--epochs", "2") == 0
    assert "trained 2 epochs; best top1:" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"last.pt", "last.prev.pt", "best.pt", "metrics.csv", "metrics.png"}
    state = load_checkpoint(out / "last.pt")
    assert state["meta"]["model"] == "vgg16-cifar" and state["meta"]["adapter_args"]["width"] == 0.125
    assert state["config"]["optimizer"] == "sgd" and state["config"]["weight_decay"] == 5e-4

    assert train(folder, out, "--epochs", "3", "--resume") == 0
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and [r["step"] for r in rows] == ["2", "4", "6"]

    assert train(folder, out, "--epochs", "3") == 2  # a second run into the same folder is refused
    assert "already holds a run" in capsys.readouterr().err


def test_starts_from_weights_and_resume_finds_them_again(folder, tmp_path, capsys):
    """--weights is where the model comes from (a pruned recipe gives the pruned architecture);
    the checkpoint records it, so --resume without --weights rebuilds the same model."""
    import detprune

    small = detprune.plugins().adapter("vgg16-cifar", num_classes=2, width=0.125).build()
    torch.save(small.state_dict(), tmp_path / "small.pt")
    out = tmp_path / "ft"
    assert (
        main(
            [
                "train",
                "--model",
                "vgg16-cifar",
                "--width",
                "0.125",
                "--data",
                str(folder),
                "--out",
                str(out),
                "--weights",
                str(tmp_path / "small.pt"),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--workers",
                "0",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    assert load_checkpoint(out / "last.pt")["meta"]["weights"] == str((tmp_path / "small.pt").resolve())
    assert train(folder, out, "--epochs", "2", "--resume") == 0


def test_a_truncated_checkpoint_is_one_line_naming_the_file(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(folder, out, "--epochs", "2") == 0
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert train(folder, out, "--epochs", "3", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"detprune: error: {out / 'last.pt'}: checkpoint is truncated or corrupt")
    assert err.endswith(f"resume from it with --resume {out / 'last.prev.pt'}")
    assert train(folder, out, "--epochs", "3", "--resume", str(out / "last.prev.pt")) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 3


def test_model_and_dataset_task_must_agree(folder, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--model",
            "yolov3",
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "x"),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--img-size",
            "64",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "model 'yolov3' is a detection model but" in err and "is a classification dataset" in err


def test_card_anchors_follow_the_input_size():
    """VisDrone's anchors are stored in pixels of a 608 input; a 304 input gets them halved."""
    from detprune.data import load_card
    from detprune.pipeline.weights import adapter_args

    card = load_card(REPO / "datasets" / "visdrone.yaml")
    assert adapter_args("yolov3", card)["anchors"][:2] == [[4.0, 6.0], [6.0, 12.0]]
    assert adapter_args("yolov3", card, 304)["anchors"][:2] == [[2.0, 3.0], [3.0, 6.0]]

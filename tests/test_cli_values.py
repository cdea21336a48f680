"""Every bad value on the command line is one line naming the command and flag, before any work."""

from __future__ import annotations

import pytest
import torch

from detprune.cli import main

BASE = {
    "eval": ["eval", "--model", "yolov3", "--data", "d", "--weights", "w.pt"],
    "train": ["train", "--model", "yolov3", "--data", "d", "--epochs", "1", "--out", "o"],
    "prune": ["prune", "--model", "yolov3", "--out", "o"],
}


@pytest.mark.parametrize(
    "command, flag, value, why",
    [
        ("eval", "--max-det", "0", "is not a positive integer"),
        ("eval", "--conf", "1.5", "is not in [0, 1]"),
        ("eval", "--conf", "nan", "'nan' is not a finite number"),
        ("eval", "--nms-iou", "-0.1", "is not in [0, 1]"),
        ("eval", "--img-size", "0", "is not a positive integer"),
        ("eval", "--batch-size", "0", "is not a positive integer"),
        ("eval", "--workers", "-1", "is not an integer >= 0"),
        ("train", "--clip-grad", "-1", "is not a number > 0"),
        ("train", "--warmup-epochs", "-1", "is not a number >= 0"),
        ("train", "--batch-size", "0", "is not a positive integer"),
        ("train", "--epochs", "0", "is not a positive integer"),
        ("train", "--lr", "0", "is not a number > 0"),
        ("prune", "--latency-iters", "0", "is not a positive integer"),
        ("prune", "--warmup-epochs", "-1", "is not a number >= 0"),
        ("prune", "--alpha", "-1", "is not in [0, 1]"),
        ("prune", "--img-size", "0", "is not a positive integer"),
        ("prune", "--batch-size", "0", "is not a positive integer"),
        ("prune", "--workers", "-1", "is not an integer >= 0"),
        ("prune", "--ratio", "x", "'x' is not a number"),
    ],
)
def test_bad_values_are_one_line(capsys, command, flag, value, why):
    assert main([*BASE[command], flag, value]) == 2
    err = capsys.readouterr().err.strip()
    shown = value if not why.startswith("'") else ""
    assert (
        err == f"detprune {command}: error: argument {flag}: {shown + ' ' if shown else ''}{why} "
        f"(see detprune {command} --help)"
    )


def test_eval_on_a_missing_gpu_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    card = tmp_path / "c.yaml"
    card.write_text("name: c\ntask: detection\nformat: visdrone\nroot: .\nsplits: {val: val}\nclasses: [a]\n")
    assert main(["eval", "--model", "yolov3", "--data", str(card), "--weights", "w.pt", "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == (
        "detprune: error: device 'cuda' asked for, but no CUDA device is visible to torch"
    )


def test_alpha_of_one_is_refused_by_the_pipeline(capsys):
    assert main(["prune", "--model", "yolov3", "--out", "o", "--compensator", "sketch", "--alpha", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "detprune: error: --alpha must be in [0, 1) (layers pruned above it are compensated), got 1.0"
    )

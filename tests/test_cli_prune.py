"""``detprune prune`` on the command line: a run with --json, its --help, and user errors as one line."""

from __future__ import annotations

import json

import pytest

from conftest import make_colour_folder, prune_classifier
from detprune.cli import main
from detprune.plugin.options import parse_options


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ and val/ with two classes of 32x32 PNGs."""
    return make_colour_folder(tmp_path_factory.mktemp("cls"), {"train": 8, "val": 4})


def prune(folder, out, *extra):
    return prune_classifier(folder, out, *extra, latency_iters=2)


def test_prune_prints_the_report_as_json(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert prune(folder, out, "--ratio", "0.25", "--round-to", "4", "--finetune-epochs", "1", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ratio"] == 0.25 and report["config"]["round_to"] == 4
    assert all(r["after"] % 4 == 0 for r in report["layers"] if r["kind"] == "Conv2d")
    assert report["files"]["pruned"] == str(out / "pruned.pt") and (out / "pruned.pt").is_file()
    assert "widths" not in report["files"]  # --no-plots


def test_prune_summary_names_the_files(folder, tmp_path, capsys):
    assert prune(folder, tmp_path / "s", "--ratio", "0.5", "--model-arg", "num_classes=2") == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["model", "params", "FLOPs", "latency", "ms", "top1"]
    assert "achieved channel ratio 0.500 (asked 0.5)" in text and str(tmp_path / "s" / "report.md") in text


def test_help_explains_the_flags(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--sparsity",
        "--sparsity-epochs",
        "--compensator",
        "--alpha",
        "--shortcut",
        "--finetune-epochs",
        "--epochs-dense",
        "--round-to",
        "--json",
        "pruned.pt",
        "report.json",
    ):
        assert flag in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pruner", "slimmin"], "detprune: error: unknown pruner 'slimmin'."),
        (
            ["--ratio", "1.5"],
            "detprune prune: error: argument --ratio: 1.5 is not in [0, 1] (see detprune prune --help)",
        ),
        (["--ratio", "1"], "detprune: error: --ratio must be in [0, 1), the fraction of channels removed; got 1.0"),
        (
            ["--pruner-opt", "criterion"],
            "detprune: error: --pruner-opt expects KEY=VALUE, e.g. images=64, got 'criterion'",
        ),
        (["--criterion", "nope"], "detprune: error: unknown criterion 'nope'."),
        (["--compensator", "nope"], "detprune: error: unknown compensator 'nope'."),
        (["--shortcut", "union"], "detprune: error: pruner 'oneshot' takes no option 'shortcut' (--shortcut union)"),
    ],
)
def test_user_errors_are_one_line(folder, tmp_path, capsys, extra, message):
    assert prune(folder, tmp_path / "e", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(message)


def test_missing_data_folder_is_one_line(tmp_path, capsys):
    assert (
        main(["prune", "--model", "vgg16-cifar", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err


def test_parse_options_reads_json_values():
    assert parse_options(["s=1e-4", "shortcut-width=mean", "flag=true", "sizes=[1, 2]"], "--pruner-opt") == {
        "s": 1e-4,
        "shortcut_width": "mean",
        "flag": True,
        "sizes": [1, 2],
    }


def test_a_data_driven_pruner_gets_the_training_split_without_training(folder, tmp_path):
    """ThiNet samples activations on training images: --data's train split reaches it with no epochs."""
    out = tmp_path / "thinet"
    assert prune(folder, out, "--pruner", "thinet", "--ratio", "0.25", "--pruner-opt", "images=4", "--json") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["meta"]["pruner"] == "thinet" and report["data"]["train_images"] == 8
    assert report["training"] == {}


def test_one_key_value_grammar_for_every_option_flag():
    from detprune.errors import DetpruneError
    from detprune.plugin.options import parse_assignment

    assert parse_assignment("sketch.calib-batches=4", "--set", dotted=True) == ("sketch.calib_batches", 4)
    assert parse_assignment('args={"width": 0.25}', "--pruner-opt") == ("args", {"width": 0.25})
    assert parse_assignment("mode=layerwise", "--pruner-opt") == ("mode", "layerwise")
    with pytest.raises(DetpruneError, match=r"^--model-arg expects KEY=VALUE, e.g. images=64, got '2x=1'$"):
        parse_assignment("2x=1", "--model-arg")

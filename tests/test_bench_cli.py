"""``detprune bench``: fidelity's argument handling, table and JSON (with fake row modules), the
pass-through commands, the missing-checkout error, and one real method end to end on a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import detprune
from detprune.bench import seed_tables as st
from detprune.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ROW_MODULE = "detprune.bench.fidelity.{}"


def _fake(name: str, rows=None, error: Exception | None = None):
    """A row module: records the config it saw, returns ``rows`` or raises ``error``."""
    mod = types.ModuleType(name)
    mod.QUICK = {"epochs": 10, "threads": 1}
    mod.FULL = {"epochs": 60, "threads": None}
    mod.seen = []

    def run(quick: bool = True):
        mod.seen.append((quick, dict(mod.QUICK if quick else mod.FULL)))
        if error is not None:
            raise error
        return rows

    mod.run = run
    return mod


ROWS = [
    {
        "method": "thinet",
        "baseline": "l1",
        "metric": "top1 all layers @0.3",
        "method_value": 0.45,
        "baseline_value": 0.35,
        "notes": "vgg16 on fake data",
    },
    {
        "method": "thinet",
        "baseline": "l1",
        "metric": "logit_rel_err all layers @0.3 (lower=better)",
        "method_value": 0.2,
        "baseline_value": 0.5,
        "notes": "vgg16 on fake data",
    },
]


@pytest.fixture
def fakes(monkeypatch):
    """Fake ``thinet`` and ``mfp`` row modules in place of the real ones (restored at teardown)."""
    mods = {
        "thinet": _fake("thinet", ROWS),
        "mfp": _fake(
            "mfp",
            [
                {
                    "method": "mfp",
                    "baseline": "sfp-l1",
                    "metric": "top1",
                    "method_value": 0.3,
                    "baseline_value": 0.3,
                    "notes": "mfp note",
                }
            ],
        ),
    }
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, ROW_MODULE.format(name), mod)
    return mods


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_rows_and_runs_the_chosen_methods_in_quick_mode(fakes, capsys):
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--json", "--methods", "thinet", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["rows"] == [{**r, "benchmark": "thinet", "better": "method"} for r in ROWS]
    assert result["quick"] is True and result["methods"] == ["thinet"] and result["errors"] == {}
    assert set(result["seconds"]) == {"thinet"}
    assert fakes["thinet"].seen == [(True, {"epochs": 10, "threads": 1})]
    assert fakes["mfp"].seen == []


def test_without_quick_the_full_configs_run(fakes, capsys):
    code, out, err = _run(capsys, "bench", "fidelity", "--json", "--no-progress", "--methods", "mfp,thinet,mfp")
    assert code == 0, err
    result = json.loads(out)
    assert result["methods"] == ["mfp", "thinet"]  # order kept, duplicate dropped
    assert [r["method"] for r in result["rows"]] == ["mfp", "thinet", "thinet"]
    assert fakes["thinet"].seen == [(False, {"epochs": 60, "threads": None})]


def test_set_and_threads_override_the_config_during_the_run_only(fakes, capsys):
    code, out, err = _run(
        capsys,
        "bench",
        "fidelity",
        "--quick",
        "--json",
        "--methods",
        "thinet,mfp",
        "--no-progress",
        "--set",
        "thinet.epochs=3",
        "--set",
        "mfp.epochs=[1, 2]",
        "--threads",
        "2",
    )
    assert code == 0, err
    assert fakes["thinet"].seen == [(True, {"epochs": 3, "threads": 2})]
    assert fakes["mfp"].seen == [(True, {"epochs": (1, 2), "threads": 2})]
    assert fakes["thinet"].QUICK == {"epochs": 10, "threads": 1}  # restored
    assert fakes["mfp"].QUICK == {"epochs": 10, "threads": 1}


def test_table_lists_every_row_with_delta_and_winner_then_notes_once(fakes, capsys):
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--methods", "thinet,mfp", "--no-progress")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["method", "baseline", "metric", "method", "baseline", "delta", "better"]
    top1, err_row, mfp = lines[2], lines[3], lines[4]
    assert top1.split()[:2] == ["thinet", "l1"] and top1.split()[-4:] == ["0.4500", "0.3500", "+0.1000", "method"]
    assert err_row.split()[-4:] == ["0.2000", "0.5000", "-0.3000", "method"]  # lower=better: the method wins
    assert mfp.split()[-4:] == ["0.3000", "0.3000", "+0.0000", "tie"]
    assert out.count("vgg16 on fake data") == 1 and "  thinet: vgg16 on fake data" in lines
    assert "  mfp: mfp note" in lines
    assert lines[-1].startswith("quick run, ") and "thinet " in lines[-1] and "mfp " in lines[-1]


def test_a_failing_method_is_reported_and_the_others_still_run(fakes, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, ROW_MODULE.format("mfp"), _fake("mfp", error=RuntimeError("out of memory")))
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--json", "--methods", "mfp,thinet", "--no-progress")
    assert code == 1
    result = json.loads(out)
    assert result["errors"] == {"mfp": "RuntimeError: out of memory"}
    assert [{k: r[k] for k in ROWS[0]} for r in result["rows"]] == ROWS


def test_a_row_without_the_contract_keys_is_an_error_of_that_method(fakes, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, ROW_MODULE.format("mfp"), _fake("mfp", [{"method": "mfp", "metric": "top1"}]))
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--json", "--methods", "mfp", "--no-progress")
    assert code == 1
    assert json.loads(out)["errors"] == {
        "mfp": "FidelityError: method 'mfp': row 0 lacks baseline, method_value, baseline_value, notes"
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "thinet,foo"], "--methods: unknown method 'foo'; choose from thinet, mfp, autoslim, sketch"),
        (["--methods", ","], "--methods: unknown method (none given); choose from thinet, mfp, autoslim, sketch"),
        (["--set", "thinet.epochs"], "--set expects TARGET.KEY=VALUE, e.g. sketch.epochs=2, got 'thinet.epochs'"),
        (["--set", "epochs=3"], "--set expects TARGET.KEY=VALUE, e.g. sketch.epochs=2, got 'epochs=3'"),
        (
            ["--set", "yolo.epochs=3"],
            "--set 'yolo.epochs=3': unknown method 'yolo'; choose from thinet, mfp, autoslim, sketch",
        ),
        (
            ["--methods", "thinet", "--set", "thinet.epoch=3"],
            "--set thinet.epoch: thinet has no setting 'epoch'; its settings: epochs, threads",
        ),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
    ],
)
def test_user_errors_are_one_line_before_any_run(fakes, capsys, argv, message):
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--no-progress", *argv)
    assert code == 2
    assert err == f"detprune: error: {message}\n"
    assert fakes["thinet"].seen == [] and fakes["mfp"].seen == []


@pytest.mark.parametrize(
    "command, module",
    [
        ("engine", "engine"),
        ("latency", "latency"),
        ("train-throughput", "train_throughput"),
        ("seed-tables", "seed_tables"),
        ("evaluate-speed", "evaluate_speed"),
    ],
)
def test_pass_through_commands_run_their_benchmark_with_the_remaining_arguments(monkeypatch, command, module):
    import importlib

    calls = []
    monkeypatch.setattr(
        importlib.import_module(f"detprune.bench.{module}"), "main", lambda argv: calls.append(argv) or 3
    )
    assert main(["bench", command, "--quick", "--threads", "1", "--help"]) == 3
    assert calls == [["--quick", "--threads", "1", "--help"]]


def test_pass_through_help_is_the_benchmarks_own(capsys):
    assert main(["bench", "latency", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: detprune bench latency")


def test_the_benchmarks_ship_in_the_package():
    """`detprune bench` needs no checkout: every benchmark is a module of the installed package."""
    import detprune.bench.fidelity.runner as runner
    from detprune.cli.bench import BENCHMARKS

    root = Path(detprune.__file__).resolve().parent / "bench"
    assert all((root / f"{module}.py").is_file() for module, _ in BENCHMARKS.values())
    assert all((root / "fidelity" / f"{name}.py").is_file() for name in runner.METHODS)


def test_bench_help_lists_every_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for name in ("fidelity", "engine", "latency", "train-throughput", "seed-tables"):
        assert name in out


def test_fidelity_script_and_cli_share_their_options():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "fidelity.py"), "--methods", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "fidelity: error: --methods: unknown method 'nope'; choose from thinet, mfp, autoslim, sketch"
    )


TINY_SKETCH = [
    "sketch.width=0.0625",
    "sketch.n_train=200",
    "sketch.n_test=100",
    "sketch.epochs=1",
    "sketch.batch=50",
    "sketch.calib_batches=2",
    "sketch.finetune_epochs=1",
]


def test_sketch_row_runs_end_to_end_on_a_tiny_config(capsys):
    from detprune.bench.fidelity import sketch

    before = dict(sketch.QUICK)
    argv = ["bench", "fidelity", "--quick", "--json", "--methods", "sketch", "--no-progress"]
    for item in TINY_SKETCH:
        argv += ["--set", item]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == {}
    rows = result["rows"]
    assert [(r["method"], r["baseline"]) for r in rows] == [
        ("ns+sketch", "ns"),
        ("ns+sketch", "ns"),
        ("ns+sketch+adabn", "ns+adabn"),
        ("ns+sketch-procrustes", "ns"),
        ("ns+sketch-procrustes", "ns"),
    ]
    assert [r["metric"] for r in rows][:2] == ["top1 @0.7 before fine-tune", "top1 @0.7 after 1 fine-tune ep"]
    for r in rows:
        assert 0.0 <= r["method_value"] <= 1.0 and 0.0 <= r["baseline_value"] <= 1.0
        assert "(200 train / 100 test)" in r["notes"] and "same channels: True" in r["notes"]
    assert rows[0]["baseline_value"] == rows[3]["baseline_value"]  # one NS model, one evaluation
    assert before == sketch.QUICK  # the overrides did not stick


@pytest.mark.slow
def test_full_quick_run_covers_all_four_methods(capsys):
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == {}
    assert {r["method"].split("+")[0].split("-")[0] for r in result["rows"]} >= {"thinet", "mfp", "autoslim", "ns"}


def test_seed_tables_set_overrides_one_study_and_reads_json_values():
    import argparse

    found = st.studies(quick=True, yolo_data="synthetic")
    out = st.overridden(
        found,
        ["yolov3.img_size=640", "yolov3.alphas=[0.3]", 'yolov3.model_args={"depth": 0.5}'],
        argparse.ArgumentParser(),
    )
    yolo = next(s for s in out if s.name == "yolov3")
    assert (yolo.img_size, yolo.alphas, yolo.model_args) == (640, (0.3,), {"depth": 0.5})
    assert [s for s in out if s.name != "yolov3"] == [s for s in found if s.name != "yolov3"]


@pytest.mark.parametrize(
    "item, message",
    [
        ("yolov3.bogus=1", "--set 'yolov3.bogus=1': unknown setting 'bogus'"),
        ("nope.img_size=1", "--set 'nope.img_size=1': unknown study 'nope' (known: vgg16, yolov3, centernet)"),
        ("img_size=1", "--set expects TARGET.KEY=VALUE, e.g. yolov3.img_size=640, got 'img_size=1'"),
    ],
)
def test_seed_tables_set_rejects_bad_overrides_by_name(capsys, item, message):
    import argparse

    with pytest.raises(SystemExit):
        st.overridden(st.studies(quick=True, yolo_data="synthetic"), [item], argparse.ArgumentParser())
    assert message in capsys.readouterr().err

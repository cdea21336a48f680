"""``detprune bench``: fidelity's argument handling, table and JSON (with fake row modules), the
pass-through commands, the missing-checkout error, and one real method end to end on a tiny config."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import detprune
from detprune.bench import seed_tables as st
from detprune.cli import main

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ROW_MODULE = "detprune.bench.fidelity.{}"


def _fake(name: str, rows=None, error: Exception | None = None, seeds: int = 2):
    """A row module of the runner's contract: records (config, seed) of each call; its rows' values
    move with the seed (``+ seed / 100`` on the method) so pairing and the interval can be checked."""
    mod = types.ModuleType(name)
    mod.QUICK = {"epochs": 10, "seeds": seeds, "threads": 1}
    mod.FULL = {"epochs": 60, "seeds": 1, "threads": None}
    mod.seen = []

    def run_seed(cfg, seed):
        mod.seen.append((dict(cfg), seed))
        if error is not None:
            raise error
        if rows is None:
            return None
        return [{**r, "method_value": round(r["method_value"] + seed / 100, 4)} if "method_value" in r else r
                for r in rows]  # fmt: skip

    mod.run_seed = run_seed
    return mod


def _row(method, baseline, metric, m, b, notes, **extra):
    return {"method": method, "baseline": baseline, "metric": metric, "method_value": m, "baseline_value": b,
            "method_params": 1000, "baseline_params": 2000, "notes": notes, **extra}  # fmt: skip


ROWS = [
    _row("thinet", "l1", "top1 all layers @0.3", 0.45, 0.35, "vgg16 on fake data"),
    _row("thinet", "l1", "logit_rel_err all layers @0.3", 0.2, 0.5, "vgg16 on fake data", higher_is_better=False),
]


@pytest.fixture
def fakes(monkeypatch):
    """Fake ``thinet`` and ``mfp`` row modules in place of the real ones (restored at teardown)."""
    mods = {"thinet": _fake("thinet", ROWS), "mfp": _fake("mfp", [_row("mfp", "sfp-l1", "top1", 0.3, 0.3, "mfp note")])}
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, ROW_MODULE.format(name), mod)
    return mods


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


FIDELITY = ("bench", "fidelity", "--jobs", "1", "--no-progress")  # fakes live in this process only


def test_json_rows_pair_the_seeds_with_delta_interval_and_verdict(fakes, capsys):
    code, out, err = _run(capsys, *FIDELITY, "--quick", "--json", "--methods", "thinet")
    assert code == 0, err
    result = json.loads(out)
    assert result["quick"] is True and result["methods"] == ["thinet"] and result["errors"] == {}
    assert [seed for _, seed in fakes["thinet"].seen] == [0, 1] and fakes["mfp"].seen == []
    assert fakes["thinet"].seen[0][0] == {"epochs": 10, "seeds": 2, "threads": 1}
    top1, err_row = result["rows"]
    assert top1["method_values"] == [0.45, 0.46] and top1["baseline_values"] == [0.35, 0.35]
    assert top1["seeds"] == 2 and top1["delta"] == pytest.approx(0.105)
    # diffs 0.10, 0.11: sd 0.00707, t(1) 12.706 -> half width 0.06353
    assert top1["ci95"] == pytest.approx([0.105 - 0.063530, 0.105 + 0.063530], abs=1e-5)
    assert top1["verdict"] == "holds" and top1["method_params"] == 1000 and top1["baseline_params"] == 2000
    assert err_row["higher_is_better"] is False and err_row["delta"] == pytest.approx(-0.295)
    assert err_row["verdict"] == "holds"  # lower is better and the whole interval is below zero
    assert "better" not in top1


def test_equal_values_are_unresolved_and_one_seed_gives_no_interval(fakes, capsys):
    code, out, err = _run(capsys, *FIDELITY, "--json", "--methods", "mfp")
    assert code == 0, err
    (r,) = json.loads(out)["rows"]
    assert r["seeds"] == 1 and r["verdict"] == "unresolved" and r["delta"] == 0.0
    assert all(v != v for v in r["ci95"])  # NaN: no interval from one seed


def test_without_quick_the_full_configs_run(fakes, capsys):
    code, out, err = _run(capsys, *FIDELITY, "--json", "--methods", "mfp,thinet,mfp")
    assert code == 0, err
    result = json.loads(out)
    assert result["methods"] == ["mfp", "thinet"]  # order kept, duplicate dropped
    assert [r["method"] for r in result["rows"]] == ["mfp", "thinet", "thinet"]
    assert fakes["thinet"].seen == [({"epochs": 60, "seeds": 1, "threads": None}, 0)]


def test_set_and_threads_override_the_config_during_the_run_only(fakes, capsys):
    code, out, err = _run(
        capsys, *FIDELITY, "--quick", "--json", "--methods", "thinet,mfp",
        "--set", "thinet.epochs=3", "--set", "mfp.epochs=[1, 2]", "--set", "mfp.seeds=3", "--threads", "2",
    )  # fmt: skip
    assert code == 0, err
    assert fakes["thinet"].seen == [({"epochs": 3, "seeds": 2, "threads": 2}, s) for s in (0, 1)]
    assert fakes["mfp"].seen == [({"epochs": (1, 2), "seeds": 3, "threads": 2}, s) for s in (0, 1, 2)]
    assert fakes["thinet"].QUICK == {"epochs": 10, "seeds": 2, "threads": 1}  # restored
    assert json.loads(out)["rows"][-1]["seeds"] == 3


def test_table_lists_every_row_with_delta_interval_and_verdict_then_notes_once(fakes, capsys):
    code, out, err = _run(capsys, *FIDELITY, "--quick", "--methods", "thinet,mfp")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["study", "method", "baseline", "metric", "method", "baseline", "delta", "95%", "CI",
                                "n", "params", "m/b", "verdict"]  # fmt: skip
    top1, err_row, mfp = lines[2], lines[3], lines[4]
    assert top1.split()[:3] == ["thinet", "thinet", "l1"]
    assert top1.split()[-8:] == ["0.4550", "0.3500", "+0.1050", "[+0.0415,", "+0.1685]", "2", "1.0k/2.0k", "holds"]
    assert err_row.split()[-3:] == ["2", "1.0k/2.0k", "holds"]
    assert mfp.split()[-8:] == ["0.3050", "0.3000", "+0.0050", "[-0.0585,", "+0.0685]", "2", "1.0k/2.0k",
                                "unresolved"]  # fmt: skip
    assert out.count("vgg16 on fake data") == 1 and "  thinet: vgg16 on fake data" in lines
    assert "  mfp: mfp note" in lines
    assert lines[-1].startswith("quick run, ") and "thinet " in lines[-1] and "mfp " in lines[-1]


def test_a_failing_method_is_reported_and_the_others_still_run(fakes, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, ROW_MODULE.format("mfp"), _fake("mfp", error=RuntimeError("out of memory")))
    code, out, err = _run(capsys, *FIDELITY, "--quick", "--json", "--methods", "mfp,thinet")
    assert code == 1
    result = json.loads(out)
    assert result["errors"] == {"mfp": "RuntimeError: out of memory"}
    assert [r["method"] for r in result["rows"]] == ["thinet", "thinet"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"method": "mfp", "metric": "top1"}],
         "method 'mfp': row 0 lacks baseline, method_value, baseline_value, method_params, baseline_params, notes"),
        (None, "method 'mfp': run_seed() returned NoneType None, not rows"),
    ],
)  # fmt: skip
def test_a_row_without_the_contract_keys_is_an_error_of_that_method(fakes, capsys, monkeypatch, rows, message):
    monkeypatch.setitem(sys.modules, ROW_MODULE.format("mfp"), _fake("mfp", rows))
    code, out, err = _run(capsys, *FIDELITY, "--quick", "--json", "--methods", "mfp")
    assert code == 1
    assert json.loads(out)["errors"] == {"mfp": f"FidelityError: {message}"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "thinet,foo"], "--methods: unknown method 'foo'; choose from sketch, thinet, mfp, autoslim"),
        (["--methods", ","], "--methods: unknown method (none given); choose from sketch, thinet, mfp, autoslim"),
        (["--set", "thinet.epochs"], "--set expects TARGET.KEY=VALUE, e.g. sketch.epochs=2, got 'thinet.epochs'"),
        (["--set", "epochs=3"], "--set expects TARGET.KEY=VALUE, e.g. sketch.epochs=2, got 'epochs=3'"),
        (
            ["--set", "yolo.epochs=3"],
            "--set 'yolo.epochs=3': unknown method 'yolo'; choose from sketch, thinet, mfp, autoslim",
        ),
        (
            ["--methods", "thinet", "--set", "thinet.epoch=3"],
            "--set thinet.epoch: thinet has no setting 'epoch'; its settings: epochs, seeds, threads",
        ),
        (["--methods", "thinet", "--set", "thinet.seeds=0"], "--set thinet.seeds: must be a positive integer, got 0"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--jobs", "0"], "--jobs must be at least 1, got 0"),
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
        "fidelity: error: --methods: unknown method 'nope'; choose from sketch, thinet, mfp, autoslim"
    )


TINY_SKETCH = [
    "sketch.width=0.0625",
    "sketch.n_train=200",
    "sketch.n_test=100",
    "sketch.epochs=1",
    "sketch.batch=50",
    "sketch.calib_batches=2",
    "sketch.finetune_epochs=1",
    "sketch.seeds=2",
]


def test_sketch_study_runs_end_to_end_on_a_tiny_config_in_two_processes(capsys):
    """The real sketch study, two seeds in two worker processes: every arm of Table 2 and its controls,
    paired over the seeds, the p2 arms sharing one architecture."""
    from detprune.bench.fidelity import sketch

    before = dict(sketch.QUICK)
    argv = ["bench", "fidelity", "--quick", "--json", "--methods", "sketch", "--no-progress", "--jobs", "2"]
    for item in TINY_SKETCH:
        argv += ["--set", item]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == {} and result["jobs"] == 2
    rows = result["rows"]
    p2 = ["ns+sketch(0.2)@p2", "ns+sketch(0.5)@p2", "ns+fold+adabn@p2", "procrustes@p2", "filtersketch@p2"]
    assert [(r["method"], r["baseline"]) for r in rows] == [
        ("ns+sketch(0.2)@p2", "ns@p1"),
        ("ns+sketch(0.5)@p2", "ns@p1"),
        ("ns+adabn@p2", "ns@p1"),
        *[(m, "ns+adabn@p2") for m in p2],
        *[(m, "ns+adabn@p2") for m in [*p2, "scratch@p2"]],
    ]
    assert [r["metric"] for r in rows][:4] == [
        "Table 2: top1 after 1 ft ep", "Table 2: top1 after 1 ft ep",
        "Table 2 without the sketch: top1 after 1 ft ep", "top1 before fine-tune",
    ]  # fmt: skip
    for r in rows:
        assert r["seeds"] == 2 and len(r["method_values"]) == 2 and r["verdict"] in ("holds", "fails", "unresolved")
        assert all(0.0 <= v <= 1.0 for v in r["method_values"] + r["baseline_values"])
        assert "(200 train / 100 test)" in r["notes"]
    # the p2 arms share one architecture, smaller than p1's
    assert len({r["method_params"] for r in rows[3:]}) == 1 and rows[0]["method_params"] < rows[0]["baseline_params"]
    assert before == sketch.QUICK  # the overrides did not stick


TINY_OTHERS = {
    "thinet": ["n_train=200", "n_test=100", "epochs=1", "width=0.0625", "images=16", "finetune_epochs=1",
               "seeds=1"],
    "mfp": ["n_train=240", "n_test=100", "holdout=40", "epochs=1", "width=0.0625", "soft_epochs=2",
            "soft_train=64", "meta_batches=1", "seeds=1"],
    "autoslim": ["n_train=240", "n_test=100", "holdout=64", "epochs=1", "retrain_epochs=1", "width=0.0625",
                 "score_batches=1", "calib_batches=1", "seeds=1"],
}  # fmt: skip


@pytest.mark.parametrize("method", list(TINY_OTHERS))
def test_thinet_mfp_and_autoslim_studies_run_end_to_end_on_a_tiny_config(method, capsys):
    """The real studies, one seed in this process: each row pairs the method with its baseline at equal
    parameters (ThiNet, MFP) or within a channel's FLOPs of the budget (AutoSlim)."""
    argv = ["bench", "fidelity", "--quick", "--json", "--methods", method, "--no-progress", "--jobs", "1"]
    for item in TINY_OTHERS[method]:
        argv += ["--set", f"{method}.{item}"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == {}
    rows = result["rows"]
    assert rows and all(r["seeds"] == 1 and r["verdict"] == "unresolved" for r in rows)  # one seed decides nothing
    if method == "thinet":
        assert {r["baseline"] for r in rows} == {"l1", "random", "apoz"}
        assert all(r["method_params"] == r["baseline_params"] for r in rows)
    elif method == "mfp":
        assert {(r["method"], r["baseline"]) for r in rows} >= {("mfp(mask_bn)", "l2(mask_bn)"),
                                                                 ("mfp(mask_bn)", "mfp(no mask_bn)")}  # fmt: skip
        assert all("40 held out of training" in r["notes"] and "never test" in r["notes"] for r in rows)
    else:
        assert [r["method"] for r in rows] == ["autoslim@1x", "autoslim@0.75x", "autoslim@0.5x"]
        for r in rows:
            ratio = float(r["notes"].split(" of the budget")[-2].rsplit("= ", 1)[1])
            assert 0.97 <= ratio <= 1.0 and "filled by single channels" in r["notes"]


@pytest.mark.slow
def test_full_quick_run_covers_all_four_methods(capsys):
    code, out, err = _run(capsys, "bench", "fidelity", "--quick", "--json", "--no-progress")
    assert code == 0, err
    result = json.loads(out)
    assert result["errors"] == {}
    assert {r["benchmark"] for r in result["rows"]} == {"sketch", "thinet", "mfp", "autoslim"}
    assert all(r["seeds"] == 3 for r in result["rows"])


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


@pytest.mark.skipif(not (st.SHARED / "cifar10-sample").is_dir(), reason="needs ../shared/data/cifar10-sample")
def test_seed_tables_vgg16_runs_table_2_with_its_control_on_a_tiny_config(tmp_path, capsys):
    """Table 2's arms end to end: NS at p1, the control (p2's architecture, no compensator), NS + sketch
    at p2 per alpha with the paper's own figures beside them, Procrustes, Torch-Pruning at the same size."""
    tiny = ["dense_epochs=1", "finetune_epochs=1", "train_limit=100", "val_limit=100", "width=0.0625",
            "alphas=[0.2, 0.5]"]  # fmt: skip
    argv = ["--quick", "--only", "vgg16", "--out", str(tmp_path), "--json"]
    for item in tiny:
        argv += ["--set", f"vgg16.{item}"]
    assert st.main(argv) == 0
    captured = capsys.readouterr()
    out = captured.out
    rows = {r["method"]: r for r in json.loads(out[: out.rindex("]") + 1])}
    assert list(rows)[:6] == ["dense", "NS", "NS@p2 sketch widths, no compensator", "NS+sketch a=0.2",
                              "NS+sketch a=0.5", "NS+sketch procrustes a=0.3"]  # fmt: skip
    if importlib.util.find_spec("torch_pruning") is None:  # the peer is a bench extra, absent in a dev install
        assert len(rows) == 6
        assert "[vgg16] Torch-Pruning row skipped: torch-pruning is not installed" in captured.err
    else:
        assert list(rows)[6].startswith("Torch-Pruning BNScale")
    control = rows["NS@p2 sketch widths, no compensator"]
    assert control["params"] == rows["NS+sketch a=0.2"]["params"] < rows["NS"]["params"] < rows["dense"]["params"]
    assert (control["paper_params"], rows["NS"]["paper_params"]) == ("-", "0.84M")
    assert (rows["NS+sketch a=0.2"]["paper_metric"], rows["NS+sketch a=0.5"]["paper_metric"]) == ("93.4 %", "93.2 %")
    assert (tmp_path / "seed_tables.json").is_file()


@pytest.mark.skipif(not (st.SHARED / "cifar10-sample").is_dir(), reason="needs ../shared/data/cifar10-sample")
def test_seed_tables_dense_training_resumes_after_an_interruption(tmp_path, capsys):
    """An interrupted sparsity training (last.pt written, the dense file not yet) continues on the next
    run instead of stopping with "already holds a run"; a finished one is not trained again."""
    from dataclasses import replace

    study = next(s for s in st.studies(quick=True, yolo_data="synthetic") if s.name == "vgg16")
    study = replace(study, dense_epochs=1, train_limit=64, val_limit=64, width=0.0625)
    first = st.dense_model(study, tmp_path, "cpu", retrain=False)
    weights = torch.load(first, weights_only=True)["model"]
    first.unlink()  # as if the run had stopped between the last epoch and writing the dense file
    again = st.dense_model(study, tmp_path, "cpu", retrain=False)
    assert f"sparsity training resuming {tmp_path / 'vgg16' / f'train-dense-{st.dense_key(study)}' / 'last.pt'}" in (
        capsys.readouterr().err
    )
    resumed = torch.load(again, weights_only=True)["model"]
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)

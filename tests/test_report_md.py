"""report.md from hand-made report dicts (the structure of a real slimming + sketch run's report.json):
each fact once (criterion, achieved ratio), labelled "kept %" columns, the sparsity actually used, a
readable compensation section and noisy latency flagged."""

from __future__ import annotations

import copy

import pytest

from detprune.pipeline.report import (
    LATENCY_SPREAD_LIMIT,
    NOISY,
    latency_spread,
    markdown,
)


def _stats(params, flops, median, spread=0.05, map50=0.46):
    half = spread * median / 2
    return {
        "metrics": {"map50": map50, "map50_500": map50, "map": -1.0, "images": 80, "detections": 3000},
        "params": params,
        "flops": flops,
        "latency_ms": median,
        "latency": {
            "median_ms": median,
            "p10_ms": median - half,
            "p90_ms": median + half,
            "iters": 10,
            "mode": "eager",
            "device": "cpu",
            "batch": 1,
        },
    }


def _group(gid, size, kept, alpha=0.3, producers=("layers.9.conv",), error=0.1):
    ratio = 1.0 - kept / size
    hit = ratio > alpha
    return {
        "group": gid,
        "size": size,
        "kept": kept,
        "ratio": ratio,
        "layer_ratio": ratio,
        "triggered": hit,
        "rebased": hit,
        "reason": "" if hit else f"prune ratio {ratio:.3f} <= alpha {alpha}",
        "producers": list(producers),
        "gram_error": error if hit else None,
        **({"widths": {p: kept for p in producers}, "shared_basis_only": []} if len(producers) > 1 else {}),
    }


SKETCH = {
    "compensator": "sketch",
    "alpha": 0.3,
    "mode": "fd",
    "variant": "rebase",
    "bn": "fold",
    "recalibrate": "new",
    "bn_statistics": "calibrated on 20 batches",
    "rebased": [10, 14],
    "groups": [
        _group(6, 32, 31, producers=("layers.9.conv", "layers.11.conv")),
        _group(10, 64, 7),
        _group(11, 32, 29),
        _group(14, 128, 13, producers=("layers.29.conv", "layers.31.conv")),
    ],
}


def slimming_report(**over):
    """A slimming run: the context's criterion is l1, the plan's meta says bn-scale; meta counts BN positions."""
    r = {
        "format": "detprune-report/1",
        "model": "yolov3",
        "adapter_args": {"num_classes": 10},
        "task": "detection",
        "data": {"name": "synthetic", "img_size": 320, "val_split": "val", "val_images": 80},
        "pruner": "slimming",
        "pruner_options": {"shortcut": "sketch"},
        "criterion": "l1",
        "ratio": 0.5,
        "compensators": ["sketch"],
        "compensator_options": {"sketch": {"alpha": 0.3}},
        "device": "cpu",
        "metric": "map50",
        "dense": _stats(599187, 401280000, 10.0),
        "pruned": _stats(135868, 252949600, 9.0),
        "before_finetune": {"map50": 0.39},
        "kept": {"params": 0.2268, "flops": 0.6304, "latency_ms": 0.9},
        "plan": {
            "meta": {
                "pruner": "slimming",
                "criterion": "bn-scale",
                "asked_ratio": 0.5,
                "achieved_ratio": 0.5208,
                "threshold": 0.2873,
                "channels": 1968,
                "channels_removed": 1025,
                "floor_hits": ["layers.27.conv", "layers.29.conv"],
                "shortcut": "sketch",
                "min_keep": 0.1,
                "round_to": None,
                "shortcut_width": "min",
                "s": 0.0001,
            },
            "groups": 35,
            "groups_pruned": 21,
            "channels_before": 1528,
            "channels_after": 792,
            "achieved_ratio": 0.4817,
            "widths": {"6": {"layers.9.conv": 32, "layers.11.conv": 31}},
        },
        "layers": [
            {"module": "layers.9.conv", "kind": "Conv2d", "before": 32, "after": 31},
            {"module": "layers.19.conv", "kind": "Conv2d", "before": 64, "after": 7},
        ],
        "compensation": {"sketch": copy.deepcopy(SKETCH)},
        "training": {"finetune": {"epochs": 5, "lr": 0.001, "history": [{"epoch": 5, "train_loss": 26.06}]}},
        "timings_s": {"trace": 0.02, "fine-tuning": 53.9},
        "files": {"md": "/run/report.md"},
        "config": {"weights": "/cache/dense.pt", "sparsity_epochs": 0},
        "detprune_version": "0",
    }
    r.update(over)
    return r


def oneshot_report(**over):
    """A oneshot run without compensators: meta's achieved ratio is the plan's own."""
    r = slimming_report(
        pruner="oneshot",
        pruner_options={"criterion": "fpgm"},
        criterion="fpgm",
        compensators=[],
        compensator_options={},
        compensation={},
    )
    r["plan"]["meta"] = {
        "pruner": "oneshot",
        "criterion": "fpgm",
        "asked_ratio": 0.5,
        "achieved_ratio": 0.4817,
        "global_ranking": False,
        "min_keep": 0.0,
        "round_to": None,
    }
    r.update(over)
    return r


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start:] if end < 0 else md[start:end]


@pytest.mark.parametrize("make, name, default", [(slimming_report, "bn-scale", "l1"), (oneshot_report, "fpgm", None)])
def test_the_criterion_is_named_once_and_it_is_the_plans(make, name, default):
    md = markdown(make())
    assert md.count(name) == 1 and md.count("criterion") == 1
    assert f"criterion `{name}`" in md
    if default:
        assert f"`{default}`" not in md


def test_one_achieved_ratio_and_the_pruners_own_count_labelled():
    md = markdown(slimming_report())
    assert md.lower().count("achieved ratio") == 1 and "achieved_ratio" not in md
    assert "Achieved ratio 0.482 (asked 0.5): 736 of the 1,528 channels in the 35 prunable groups removed" in md
    assert "counts per BN layer instead: 1,025 of 1,968 BN channels removed (52.1 %)" in md
    assert "0.5208" not in md and "asked_ratio" not in md

    md = markdown(oneshot_report())
    assert md.lower().count("achieved ratio") == 1 and "counts" not in section(md, "Plan")


def test_kept_percent_columns_are_labelled():
    md = markdown(slimming_report())
    assert "| model | params | kept % | FLOPs | kept % | latency (ms) | kept % | mAP@0.5 |" in md
    assert "| pruned | 135,868 | 22.7 | 252,949,600 | 63.0 | 9.00 | 90 | 0.4600 |" in md
    assert "| layer | kind | before | after | kept % |" in md and "| `layers.19.conv` | Conv2d | 64 | 7 | 11 |" in md
    assert " %)" not in section(md, "Plan").split("\n")[0] and "(22.7 %)" not in md


def test_sparsity_line_says_what_was_used():
    method = {"epochs": 3, "lr": 0.002, "history": [{"epoch": e, "train_loss": 30.0} for e in (1, 2, 3)]}
    trained = slimming_report(training={"method": method, **slimming_report()["training"]})
    md = markdown(trained)
    assert "- sparsity s = 0.0001, 3 sparsity epochs trained before pruning" in md
    assert "no sparsity training" not in md and "- s:" not in md

    md = markdown(slimming_report())
    assert "no sparsity training in this run (s = 0.0001 not applied; the BN scales are those of `dense.pt`)" in md
    assert "sparsity s =" not in md

    md = markdown(oneshot_report())
    assert "- no sparsity training\n" in md and "sparsity s =" not in md


def test_sketch_compensation_is_a_summary_and_a_table_without_json():
    md = markdown(slimming_report())
    comp = section(md, "Compensation")
    assert not set('{}[]"') & set(comp)
    assert "- options: alpha 0.3, mode fd, variant rebase, bn fold, recalibrate new" in comp
    assert "- BN statistics: calibrated on 20 batches" in comp
    assert "2 of 4 pruned groups triggered" in comp and "; 2 rebased" in comp
    rows = [line for line in comp.splitlines() if line.startswith("| ") and not line.startswith("| group")]
    assert len(rows) == len(SKETCH["groups"])
    assert rows[0].startswith("| 6 | `layers.9.conv` +1 | 32 | 31 | 0.031 | no | prune ratio 0.031 <= alpha 0.3 | - |")
    assert rows[1] == "| 10 | `layers.9.conv` | 64 | 7 | 0.891 | rebased | - | 0.1 |"


def test_other_compensators_render_as_short_key_value_lines():
    fold = {"folded": {"b1.0": "running_mean of b1.1", "mid.0": "bias"}, "skipped": {}, "no_bn": 3, "not_constant": 0}
    long = {"values": list(range(500)), "nested": {"a": {"b": [1, 2]}}}
    md = markdown(
        slimming_report(
            compensators=["fold-beta", "thinet-lsq", "custom"],
            compensation={"fold-beta": fold, "thinet-lsq": None, "custom": long},
        )
    )
    comp = section(md, "Compensation")
    assert not set('{}"') & set(comp)
    assert "- folded: 2 — b1.0: running_mean of b1.1, mid.0: bias" in comp and "- skipped: none" in comp
    assert "- no_bn: 3" in comp and "- not_constant: 0" in comp
    assert "### `thinet-lsq`\n\n- no report" in comp
    assert all(len(line) < 260 for line in comp.splitlines())


def test_noisy_latency_is_flagged_and_quiet_latency_is_not():
    quiet = slimming_report()
    md = markdown(quiet)
    assert NOISY not in md and "noisy" not in md

    noisy = slimming_report(dense=_stats(599187, 401280000, 10.0, spread=LATENCY_SPREAD_LIMIT + 0.05))
    assert latency_spread(noisy["dense"]) == pytest.approx(LATENCY_SPREAD_LIMIT + 0.05)
    md = markdown(noisy)
    assert f"| 10.00 {NOISY} |" in md and f"| 9.00 {NOISY} |" not in md
    note = next(line for line in md.splitlines() if line.startswith(f"{NOISY} noisy latency"))
    assert "dense (p90 − p10) / median = 30 %" in note and "pruned" not in note and "--latency-iters" in note

    no_spread = slimming_report()
    del no_spread["dense"]["latency"]
    assert latency_spread(no_spread["dense"]) is None and NOISY not in markdown(no_spread)

"""Paired statistics of the fidelity benchmark: Student's t interval of the per-seed differences and
the verdict it implies, in the metric's own direction."""

from __future__ import annotations

import math

import pytest

from detprune.bench.fidelity.stats import paired, t95


def test_interval_is_students_t_of_the_paired_differences():
    out = paired([0.55, 0.7, 0.85], [0.4, 0.5, 0.6])  # diffs 0.15, 0.2, 0.25: mean 0.2, sd 0.05
    half = 4.303 * 0.05 / math.sqrt(3)
    assert out["seeds"] == 3 and out["delta"] == pytest.approx(0.2)
    assert out["ci95"] == pytest.approx([0.2 - half, 0.2 + half])
    assert out["method_value"] == pytest.approx(0.7) and out["baseline_value"] == pytest.approx(0.5)
    assert out["verdict"] == "holds"


def test_pairing_removes_the_seed_to_seed_spread():
    """Unpaired, these means overlap widely; paired, the method is better on every seed by 0.01."""
    out = paired([0.31, 0.51, 0.71], [0.30, 0.50, 0.70])
    assert out["verdict"] == "holds" and out["ci95"][0] == pytest.approx(0.01) == out["ci95"][1]


@pytest.mark.parametrize(
    "method, baseline, higher, verdict",
    [
        ([0.4, 0.41, 0.39], [0.5, 0.5, 0.5], True, "fails"),
        ([0.4, 0.41, 0.39], [0.5, 0.5, 0.5], False, "holds"),  # lower is better: an error that went down
        ([0.5, 0.6, 0.4], [0.5, 0.5, 0.5], True, "unresolved"),  # the interval contains zero
        ([0.9], [0.1], True, "unresolved"),  # one seed: no interval, no verdict
    ],
)
def test_verdict_reads_the_interval_in_the_metrics_direction(method, baseline, higher, verdict):
    assert paired(method, baseline, higher)["verdict"] == verdict


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="one method and one baseline value per seed"):
        paired([0.1, 0.2], [0.1])


def test_t_quantiles_fall_back_to_the_normal_beyond_the_table():
    assert t95(1) == 12.706 and t95(2) == 4.303 and t95(30) == 2.042 and t95(100) == 1.96

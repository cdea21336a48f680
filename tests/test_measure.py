"""Parameters, FLOPs (2·MAC via torch.utils.flop_counter) and latency measurement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError
from detprune.eval.measure import Latency, count_flops, count_params, measure_latency
from zoo import SimpleCNN


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    )


def test_params_and_flops_match_hand_counts():
    model, x = _net(), torch.rand(2, 3, 16, 16)
    assert count_params(model) == 8 * 3 * 9 + 8 + 8 * 4 + 4
    conv_macs = 2 * 8 * 3 * 9 * 16 * 16  # batch 2
    linear_macs = 2 * 8 * 4
    assert count_flops(model, (x,)) == 2 * (conv_macs + linear_macs)
    assert model.training  # the mode is restored


def test_prune_result_reports_smaller_flops():
    torch.manual_seed(0)
    model, x = SimpleCNN().eval(), torch.rand(1, 3, 16, 16)
    result = detprune.prune(model, x, ratio=0.5)
    assert result.params_after < result.params_before == count_params(model)
    assert 0.15 < result.flops_after / result.flops_before < 0.5  # about (1 - 0.5)^2 on inner layers
    assert "params" in result.summary() and "FLOPs" in result.summary()


def test_latency_is_a_median_of_timed_runs():
    lat = measure_latency(_net(), torch.rand(4, 3, 16, 16), warmup=2, iters=7)
    assert isinstance(lat, Latency) and lat.iters == 7 and lat.batch == 4 and lat.device == "cpu"
    assert 0 < lat.p10_ms <= lat.median_ms <= lat.p90_ms


def test_latency_modes_are_checked():
    with pytest.raises(
        DetpruneError, match=r"unknown latency mode 'fast'; modes are: eager, compile, cuda-graph, onnxruntime"
    ):
        measure_latency(_net(), torch.rand(1, 3, 8, 8), mode="fast")
    with pytest.raises(DetpruneError, match=r"latency mode 'cuda-graph' needs a CUDA device"):
        measure_latency(_net(), torch.rand(1, 3, 8, 8), mode="cuda-graph", device="cpu")


def test_onnxruntime_latency_on_cpu():
    pytest.importorskip("onnxruntime")
    lat = measure_latency(_net().eval(), torch.rand(1, 3, 16, 16), warmup=1, iters=3, mode="onnxruntime")
    assert lat.mode == "onnxruntime" and lat.median_ms > 0


@pytest.mark.slow
def test_compiled_latency_on_cpu():
    lat = measure_latency(_net().eval(), torch.rand(1, 3, 16, 16), warmup=2, iters=3, mode="compile")
    assert lat.mode == "compile" and lat.median_ms > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["eager", "cuda-graph", "compile"])
def test_gpu_latency_modes(mode):
    lat = measure_latency(_net().cuda(), torch.rand(16, 3, 32, 32, device="cuda"), warmup=3, iters=10, mode=mode)
    assert lat.device.startswith("cuda") and lat.median_ms > 0

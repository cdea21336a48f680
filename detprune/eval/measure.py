"""What a pruned model costs: parameters, FLOPs and measured latency.

FLOPs are 2·MAC of one forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``
(convolutions, matmuls and their transposes; the convention Darknet and the seed papers use,
research/algorithms.md §1). Latency is the median of ``iters`` timed runs after ``warmup`` runs:
CUDA events on a GPU, ``perf_counter`` on the CPU. Modes: ``eager``; ``compile``
(``torch.compile``); ``cuda-graph`` (one captured CUDA graph replayed, GPU only: removes the
per-kernel launch cost that hides the gain of thinner layers at small batches); and
``onnxruntime`` (CPU, via a legacy ONNX export).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detprune.errors import DetpruneError
from detprune.graph.capture import evaluating

MODES = ("eager", "compile", "cuda-graph", "onnxruntime")


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, inputs: Any) -> int:
    """2·MAC of one eval-mode forward pass on ``inputs``."""
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*_as_tuple(inputs))
    return int(counter.get_total_flops())


@dataclass
class Latency:
    """Median and spread of one configuration, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iters: int
    mode: str
    device: str
    batch: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _runner(model: nn.Module, inputs: tuple[Any, ...], mode: str, device: torch.device) -> Callable[[], Any]:
    if mode == "eager":
        return lambda: model(*inputs)
    if mode == "compile":
        compiled = torch.compile(model)
        return lambda: compiled(*inputs)
    if mode == "cuda-graph":
        if device.type != "cuda":
            raise DetpruneError("latency mode 'cuda-graph' needs a CUDA device")
        static = [t.clone() for t in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up on a side stream before capture, as the CUDA-graph docs ask
                model(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(*static)
        return graph.replay
    if mode == "onnxruntime":
        return _onnx_runner(model, inputs)
    raise DetpruneError(f"unknown latency mode '{mode}'; modes are: {', '.join(MODES)}")


def _onnx_runner(model: nn.Module, inputs: tuple[Any, ...]) -> Callable[[], Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DetpruneError("latency mode 'onnxruntime' needs the bench extra: pip install 'detprune[bench]'") from exc
    cpu_inputs = tuple(t.detach().cpu() for t in inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.cpu(), cpu_inputs, path, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), cpu_inputs)}
    return lambda: session.run(None, feed)


def measure_latency(
    model: nn.Module,
    inputs: Any,
    *,
    warmup: int = 10,
    iters: int = 50,
    mode: str = "eager",
    device: str | torch.device | None = None,
) -> Latency:
    """Median latency of ``model(*inputs)`` in eval mode without gradients."""
    inputs = _as_tuple(inputs)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if mode == "onnxruntime":
        dev = torch.device("cpu")
    model = model.to(dev).eval()
    inputs = tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in inputs)
    batch = int(inputs[0].shape[0]) if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() else 1
    times: list[float] = []
    with torch.no_grad():
        run = _runner(model, inputs, mode, dev)
        for _ in range(warmup):
            run()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(iters):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return Latency(statistics.median(times), q[0], q[-1], iters, mode, str(dev), batch)


def side_by_side_latency(models: dict[str, Any], inputs: tuple, rounds: int, iters: int) -> dict[str, float]:
    """Median latency per model over ``rounds * iters`` forward passes, the models taking turns pass by
    pass so that a shared machine's bursts of load fall on every model alike."""
    import statistics

    per: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        measure_latency(model, inputs, warmup=2, iters=2)
    for _ in range(max(1, rounds) * max(1, iters)):  # one pass of each model in turn, so bursts hit all
        for name, model in models.items():
            per[name].append(measure_latency(model, inputs, warmup=0, iters=1).median_ms)
    return {name: statistics.median(times) for name, times in per.items()}

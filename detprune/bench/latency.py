"""Latency benchmark: does a 50 % channel prune turn its FLOPs cut into a real speedup?

For one model, dense vs pruned (L1, ``--ratio``, default 0.5), with and without ``round_to``,
at batch 1 and 16, in each latency mode: prints FLOPs cut (dense / pruned), latency speedup
(dense / pruned) and realized = speedup / FLOPs cut (1.0 = every FLOP removed is time saved).
Dense and pruned models are timed in alternating rounds (``--rounds``), so a load change on a shared
machine hits both alike; each cell is the median over rounds of per-round medians.
On a GPU the deploy mode is a replayed CUDA graph (``--modes eager,cuda-graph,compile``); on the
CPU, ``onnxruntime`` is the deploy mode.

    detprune bench latency                               # resnet50 at 224 on this device
    detprune bench latency --model yolov3 --size 416 --half --modes eager,cuda-graph   # GPU
    detprune bench latency --quick                       # resnet18 at 128, few iterations
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torchvision
from torch import nn

import detprune  # noqa: E402
from detprune.eval.measure import count_flops, measure_latency  # noqa: E402


def build(name: str, size: int) -> tuple[nn.Module, tuple[str, ...], str]:
    """The dense model, its protected modules, and how it was made (for the table header)."""
    torch.manual_seed(0)
    if name == "yolo_toy":
        from detprune.bench.toys import YoloToy

        return YoloToy(nc=10, w=64).eval(), (), "tests/zoo.py YoloToy(w=64)"
    if hasattr(torchvision.models, name):
        return getattr(torchvision.models, name)(weights=None).eval(), (), f"torchvision {name}"
    adapter = detprune.plugins().adapter(name, img_size=size)
    model = adapter.build().eval()
    return model, tuple(adapter.protected(model)), f"adapter {name} {adapter.args}"


def interleaved(models: dict, x: torch.Tensor, mode: str, device: str, warmup: int, iters: int, rounds: int) -> dict:
    """Median latency per model, measured in alternating rounds so load changes hit all alike."""
    per: dict = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            lat = measure_latency(m, x, warmup=warmup, iters=max(1, iters // rounds), mode=mode, device=device)
            per[k].append(lat.median_ms)
    return {k: statistics.median(v) for k, v in per.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="detprune bench latency", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="torchvision name, yolo_toy, or a model adapter (yolov3 ...)")
    ap.add_argument("--size", type=int, default=None, help="input size (224; 128 with --quick)")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--round-to", default="none,8", help="comma list: none and/or integers")
    ap.add_argument(
        "--modes", default=None, help="latency modes (default: eager,cuda-graph on GPU; eager,onnxruntime on CPU)"
    )
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--half", action="store_true", help="fp16 on the GPU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4, help="alternate dense and pruned runs this many times")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_name = "resnet18" if args.quick and args.model == "resnet50" else args.model
    size = args.size or (128 if args.quick else 224)
    gpu = args.device.startswith("cuda")
    modes = (args.modes or ("eager,cuda-graph" if gpu else "eager,onnxruntime")).split(",")
    iters = args.iters or (5 if args.quick else (100 if gpu else 20))
    warmup = args.warmup or (2 if args.quick else (20 if gpu else 3))
    batches = [int(b) for b in args.batches.split(",")]
    rounds = [None if r == "none" else int(r) for r in args.round_to.split(",")]
    dtype = torch.float16 if args.half and gpu else torch.float32

    dense, protected, what = build(model_name, size)
    x1 = torch.rand(1, 3, size, size)
    flops_dense = count_flops(dense, (x1,))
    pruned = {}
    for r in rounds:
        result = detprune.prune(dense, x1, ratio=args.ratio, protected=protected, round_to=r)
        pruned[r] = (
            result.model,
            flops_dense / count_flops(result.model, (x1,)),
            result.params_after / result.params_before,
        )

    print(
        f"# {what}, input {size}x{size}, {args.ratio:.0%} L1 prune, device {args.device}"
        f"{' fp16' if dtype == torch.float16 else ''}, {torch.get_num_threads()} CPU threads, median of {iters}"
    )
    head = (
        f"{'mode':11s} {'batch':>5s} {'round_to':>8s} | {'dense ms':>9s} {'pruned ms':>9s} | "
        f"{'params':>6s} {'FLOPs cut':>9s} {'speedup':>7s} {'realized':>8s}"
    )
    print(head)
    print("-" * len(head))
    for mode in modes:
        for b in batches:
            x = torch.rand(b, 3, size, size, dtype=dtype)
            models = {"dense": dense.to(dtype), **{r: pruned[r][0].to(dtype) for r in rounds}}
            try:
                times = interleaved(models, x, mode, args.device, warmup, iters, args.rounds)
            except Exception as exc:  # noqa: BLE001 - a mode may be unavailable here
                print(f"{mode:11s} {b:5d}  skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                continue
            for r in rounds:
                _, cut, kept = pruned[r]
                speedup = times["dense"] / times[r]
                print(
                    f"{mode:11s} {b:5d} {str(r):>8s} | {times['dense']:9.2f} {times[r]:9.2f} | {kept:6.3f} {cut:9.2f} "
                    f"{speedup:7.2f} {speedup / cut:8.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

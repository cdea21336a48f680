"""Engine benchmark: prune 30 % of channels by L1 through detprune and Torch-Pruning, side by side.

For each model of the torchvision zoo (random init) and a YOLO-style toy (residuals, a C2f
``chunk``, SPP, an upsample route, two heads), both libraries prune a fresh copy; the table
shows per library: success (pruned, forward runs, output shapes equal), seconds, parameters
kept, and the time ratio detprune / Torch-Pruning. Torch-Pruning is told which layers produce
the outputs (its ``ignored_layers``); detprune finds them itself. detprune's time includes its
deep copy of the model and its post-surgery forward check; Torch-Pruning prunes in place. Each
cell is the median of ``--repeat`` runs on fresh copies (the machine may be shared).

    detprune bench engine                      # full zoo at 224x224 (inception_v3 at 299)
    detprune bench engine --quick              # five models at 64x64
    detprune bench engine --models resnet18,shufflenet_v2_x1_0 --fx
    detprune bench engine --models yolo_toy --detectors --size 320   # detprune's YOLOv3 and CenterNet
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
import warnings

import torch
import torchvision
from torch import nn

import detprune  # noqa: E402
from detprune.graph import trace  # noqa: E402

ZOO = [
    "resnet18",
    "resnet50",
    "vgg16_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "googlenet",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
    "regnet_y_400mf",
    "resnext50_32x4d",
    "squeezenet1_1",
    "inception_v3",
    "yolo_toy",
]
QUICK = ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "googlenet", "yolo_toy"]
DETECTORS = ["yolov3", "centernet-resnet18"]
EXTRA = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def build(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "yolo_toy":
        from detprune.bench.toys import YoloToy

        return YoloToy(nc=10, w=32).eval(), torch.rand(1, 3, size, size)
    if name in DETECTORS:  # detprune's own model adapters (plugins/models)
        adapter = detprune.plugins().adapter(name, img_size=size)
        return adapter.build().eval(), adapter.example_inputs(1)[0]
    model = getattr(torchvision.models, name)(weights=None, **EXTRA.get(name, {})).eval()
    if name == "inception_v3":  # its stem needs at least 75x75; 299 is its native size
        size = 299 if size >= 224 else max(size, 75)
    return model, torch.rand(1, 3, size, size)


def shapes(out) -> list[tuple[int, ...]]:
    from torch.utils._pytree import tree_flatten

    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The modules whose output channels are model outputs (what Torch-Pruning must be told)."""
    graph = trace(model, x)
    names = {s.module for g in graph.groups for s in g.producers if any("model output" in r for r in g.fixed_reasons)}
    return [model.get_submodule(n) for n in sorted(names)]


def run_detprune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[float, nn.Module]:
    t0 = time.perf_counter()
    result = detprune.prune(model, x, ratio=ratio, criterion="l1")
    return time.perf_counter() - t0, result.model


def run_tp(model: nn.Module, x: torch.Tensor, ratio: float, ignored: list[nn.Module]) -> tuple[float, nn.Module]:
    import torch_pruning as tp

    t0 = time.perf_counter()
    imp = tp.importance.GroupMagnitudeImportance(p=1)
    pruner = tp.pruner.BasePruner(model, x, importance=imp, pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return time.perf_counter() - t0, model


def attempt(fn, dense: nn.Module, x: torch.Tensor, ref_shapes, repeat: int) -> dict:
    """Median seconds of ``repeat`` runs of ``fn(fresh copy of dense)``; the last result is checked."""
    n0 = sum(p.numel() for p in dense.parameters())
    try:
        times = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(repeat):
                fresh = copy.deepcopy(dense)
                gc.collect()  # a garbage collection of earlier copies must not land inside a timing
                seconds, pruned = fn(fresh)
                times.append(seconds)
        seconds = statistics.median(times)
        with torch.no_grad():
            out = pruned.eval()(x)
        same = shapes(out) == ref_shapes
        kept = sum(p.numel() for p in pruned.parameters()) / n0
        return {"ok": same and kept < 0.999, "s": seconds, "kept": kept, "same": same, "err": ""}
    except Exception as exc:  # noqa: BLE001 - a library failing on a model is a result
        return {
            "ok": False,
            "s": float("nan"),
            "kept": float("nan"),
            "same": False,
            "err": f"{type(exc).__name__}: {str(exc).splitlines()[0][:70] if str(exc) else ''}",
        }


def fx_trace(model: nn.Module, x: torch.Tensor) -> tuple[bool, float, str]:
    """torch.fx.symbolic_trace + ShapeProp (the shapes an fx-based engine would need)."""
    from torch.fx.passes.shape_prop import ShapeProp

    gc.collect()
    t0 = time.perf_counter()
    try:
        gm = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
        return True, time.perf_counter() - t0, ""
    except Exception as exc:  # noqa: BLE001
        return False, time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"


def export_time(model: nn.Module, x: torch.Tensor) -> tuple[bool, float, str]:
    """torch.export (non-strict): the ATen-level alternative to run-time capture."""
    import contextlib
    import io

    gc.collect()
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.export.export(model, (x,), strict=False)
        return True, time.perf_counter() - t0, ""
    except Exception as exc:  # noqa: BLE001
        return False, time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}"


def capture_time(model: nn.Module, x: torch.Tensor) -> float:
    gc.collect()
    t0 = time.perf_counter()
    trace(model, x)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="detprune bench engine", description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated subset of: " + ",".join(ZOO + DETECTORS))
    ap.add_argument("--detectors", action="store_true", help="add the YOLOv3 and CenterNet adapters to the list")
    ap.add_argument("--quick", action="store_true", help="five models at 64x64")
    ap.add_argument("--size", type=int, default=None, help="input size (default 224, 64 with --quick)")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning")
    ap.add_argument(
        "--fx",
        action="store_true",
        help="also time torch.fx.symbolic_trace + ShapeProp and torch.export vs detprune's capture",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per library and model; the median is shown")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.models.split(",") if args.models else (QUICK if args.quick else ZOO)
    names += DETECTORS if args.detectors else []
    size = args.size or (64 if args.quick else 224)
    unknown = [n for n in names if n not in ZOO + DETECTORS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {ZOO + DETECTORS}")

    warm, wx = build("resnet18", 32)  # first-call costs (lazy imports, kernels) are paid here for both
    run_detprune(copy.deepcopy(warm), wx, args.ratio)
    if not args.no_tp:
        run_tp(copy.deepcopy(warm), wx, args.ratio, output_layers(warm, wx))

    print(
        f"# {args.ratio:.0%} L1 channel pruning, input {size}x{size}, batch 1, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}"
    )
    head = f"{'model':20s} | {'detprune':>8s} {'s':>6s} {'kept':>6s} {'shapes':>6s}"
    if not args.no_tp:
        head += f" | {'TP':>8s} {'s':>6s} {'kept':>6s} {'shapes':>6s} | {'dp/TP':>6s}"
    if args.fx:
        head += f" | {'capture s':>9s} {'fx':>4s} {'fx s':>6s} {'export':>6s} {'exp s':>6s}"
    print(head)
    print("-" * len(head))
    tot = {"dp": 0.0, "tp": 0.0, "dp_ok": 0, "tp_ok": 0, "both": 0, "both_dp": 0.0, "both_tp": 0.0}
    notes = []
    for name in names:
        dense, x = build(name, size)
        with torch.no_grad():
            ref = shapes(dense(x))
        dp = attempt(lambda m, x=x: run_detprune(m, x, args.ratio), dense, x, ref, args.repeat)
        row = f"{name:20s} | {'ok' if dp['ok'] else 'FAIL':>8s} {dp['s']:6.2f} {dp['kept']:6.3f} {str(dp['same']):>6s}"
        tot["dp_ok"] += dp["ok"]
        tot["dp"] += dp["s"] if dp["ok"] else 0.0
        if dp["err"]:
            notes.append(f"{name}: detprune: {dp['err']}")
        if not args.no_tp:
            outs = {id(m): n for n, m in dense.named_modules()}
            outs = {outs[id(m)] for m in output_layers(dense, x)}
            tpr = attempt(
                lambda m, x=x, outs=outs: run_tp(m, x, args.ratio, [m.get_submodule(n) for n in outs]),
                dense,
                x,
                ref,
                args.repeat,
            )
            ratio = dp["s"] / tpr["s"] if dp["ok"] and tpr["ok"] else float("nan")
            row += (
                f" | {'ok' if tpr['ok'] else 'FAIL':>8s} {tpr['s']:6.2f} {tpr['kept']:6.3f} {str(tpr['same']):>6s}"
                f" | {ratio:6.2f}"
            )
            tot["tp_ok"] += tpr["ok"]
            tot["tp"] += tpr["s"] if tpr["ok"] else 0.0
            if dp["ok"] and tpr["ok"]:
                tot["both"] += 1
                tot["both_dp"] += dp["s"]
                tot["both_tp"] += tpr["s"]
            if tpr["err"]:
                notes.append(f"{name}: Torch-Pruning: {tpr['err']}")
        if args.fx:
            cap = capture_time(dense, x)
            ok, fx_s, err = fx_trace(copy.deepcopy(dense), x)
            eok, ex_s, eerr = export_time(copy.deepcopy(dense), x)
            row += f" | {cap:9.3f} {'ok' if ok else 'FAIL':>4s} {fx_s:6.3f} {'ok' if eok else 'FAIL':>6s} {ex_s:6.2f}"
            if err:
                notes.append(f"{name}: torch.fx: {err}")
            if eerr:
                notes.append(f"{name}: torch.export: {eerr}")
        print(row, flush=True)
    print("-" * len(head))
    line = f"{'total':20s} | {tot['dp_ok']:>5d}/{len(names):<2d} {tot['dp']:6.2f}"
    if not args.no_tp:
        ratio = tot["both_dp"] / tot["both_tp"] if tot["both_tp"] else float("nan")
        line += (
            f" {'':6s} {'':6s} | {tot['tp_ok']:>5d}/{len(names):<2d} {tot['tp']:6.2f} {'':6s} {'':6s} | {ratio:6.2f}"
            f"   (time ratio over the {tot['both']} models both pruned)"
        )
    print(line)
    for n in notes:
        print("  " + n)
    return 0


if __name__ == "__main__":
    sys.exit(main())

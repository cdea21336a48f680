"""``detprune info``: what a model adapter builds: parameters, FLOPs, prunable channel groups."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from torch import nn


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="parameters, FLOPs and prunable channel groups of a model adapter's model",
        description="Build a model adapter's dense model (random init) and print its parameter "
        "count, its FLOPs (2 x multiply-accumulates, torch.utils.flop_counter) at the input size, "
        "the number of prunable channel groups and channels found by the channel-dependency "
        "engine, and the protected layers (model outputs that are never pruned).",
    )
    p.add_argument("--model", required=True, help="model adapter name (see `detprune plugins --kind adapter`)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: the adapter's)")
    p.add_argument("--img-size", type=int, help="square input size (default: the adapter's)")
    p.add_argument("--width", type=float, help="width multiplier, for adapters that have one")
    p.add_argument("--depth", type=float, help="depth multiplier, for adapters that have one (yolov3)")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys params, flops, groups, ...)")
    p.set_defaults(func=run)


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """2 x MAC of one forward pass, via detprune.eval.measure when it is installed."""
    try:
        from detprune.eval.measure import count_flops as measure_flops
    except ImportError:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
        return int(counter.get_total_flops())
    return int(measure_flops(model, inputs))


def channel_groups(model: nn.Module, inputs: tuple[torch.Tensor, ...], protected: list[str]) -> dict[str, Any] | None:
    """Group counts from the channel-dependency engine, or ``None`` when it is not installed."""
    try:
        from detprune.graph import trace
    except ImportError:
        return None
    graph = trace(model, inputs, protected=tuple(protected))
    prunable = list(graph.prunable_groups())
    return {
        "total": len(graph.groups),
        "prunable": len(prunable),
        "prunable_channels": int(sum(g.size for g in prunable)),
    }


def model_info(name: str, **args: Any) -> dict[str, Any]:
    """Everything ``detprune info`` prints, as a JSON-ready dict."""
    from detprune.plugin.host import plugins

    adapter = plugins().adapter(name, **args)
    model = adapter.build().eval()
    inputs = adapter.example_inputs(1)
    protected = list(adapter.protected(model))
    return {
        "model": name,
        "task": adapter.task,
        "args": adapter.args,
        "input_shape": [list(t.shape) for t in inputs],
        "params": int(sum(p.numel() for p in model.parameters())),
        "flops": count_flops(model, inputs),
        "groups": channel_groups(model, inputs, protected),
        "protected": protected,
    }


def run(args: argparse.Namespace) -> int:
    given = {"num_classes": args.num_classes, "img_size": args.img_size, "width": args.width, "depth": args.depth}
    info = model_info(args.model, **{k: v for k, v in given.items() if v is not None})
    if args.json:
        print(json.dumps(info))
        return 0
    g = info["groups"]
    print(f"model       {info['model']} ({info['task']}) {json.dumps(info['args'])}")
    print(f"input       {' + '.join('x'.join(map(str, s)) for s in info['input_shape'])}")
    print(f"parameters  {info['params']:,} ({info['params'] / 1e6:.3f} M)")
    print(f"FLOPs       {info['flops']:,} ({info['flops'] / 1e9:.2f} G, 2 x MAC)")
    if g is None:
        print("groups      unavailable: the channel-dependency engine (detprune.graph) is not installed")
    else:
        print(f"groups      {g['prunable']} prunable of {g['total']}, {g['prunable_channels']:,} prunable channels")
    print(f"protected   {', '.join(info['protected'])}")
    return 0

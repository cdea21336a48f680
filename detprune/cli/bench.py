"""``detprune bench``: the benchmarks of :mod:`detprune.bench`, from an installed package or a checkout.

``detprune bench fidelity`` tests each method's paper claim beside its baseline; ``engine``,
``latency``, ``train-throughput``, ``seed-tables``, ``evaluate-speed`` and ``sketch-before-finetune``
run that benchmark's ``main`` with the remaining arguments (``detprune bench latency --model
mobilenet_v2`` = ``detprune bench latency --model mobilenet_v2``).
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from detprune.errors import DetpruneError

BENCHMARKS = {
    "engine": ("engine", "the channel-dependency engine vs Torch-Pruning (models pruned, seconds, params kept)"),
    "latency": ("latency", "dense vs pruned latency: FLOPs cut, speedup, realized fraction"),
    "train-throughput": ("train_throughput", "Trainer images/s, fp32 vs AMP, MFU"),
    "seed-tables": ("seed_tables", "the seed paper's tables (NS, NS + sketch, Torch-Pruning) beside its numbers"),
    "evaluate-speed": ("evaluate_speed", "the mAP scorer's speed on real VisDrone annotations vs torchmetrics"),
    "sketch-before-finetune": ("sketch_before_finetune", "the sketch compensator's readings before fine-tuning"),
}


class _BenchParser(argparse.ArgumentParser):
    """With ``passthrough=True``, a sub-command that keeps every argument after its name (``--help``
    included) for its benchmark's own parser, instead of parsing them."""

    def __init__(self, *args: Any, passthrough: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.passthrough = passthrough

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if not self.passthrough:
            return super().parse_known_args(args, namespace)
        namespace = namespace if namespace is not None else argparse.Namespace()
        for key, value in self._defaults.items():
            setattr(namespace, key, value)
        namespace.script_args = list(args or [])
        return namespace, []


def register(sub: argparse._SubParsersAction) -> None:
    from detprune.bench.fidelity.runner import fidelity_arguments

    p = sub.add_parser(
        "bench",
        help="benchmarks: methods vs their baselines (fidelity), engine, latency, training throughput, seed tables",
        description="Benchmarks that ship with detprune (detprune.bench). `fidelity` prints each pruning method "
        "beside its baseline with a paired confidence interval; the other commands pass their arguments to that "
        "benchmark (see `detprune bench <command> --help`). Tables we measured: benchmarks/README.md.",
    )
    p.set_defaults(func=lambda args: p.print_help() or 0)
    kinds = p.add_subparsers(dest="bench", metavar="<benchmark>", parser_class=_BenchParser)
    fid = kinds.add_parser(
        "fidelity",
        help="each method beside its baseline: ThiNet, MFP, AutoSlim, NS+sketch (paired, several seeds)",
        description="Test each method's paper claim on our data, beside its baseline at the same budget. --quick "
        "runs CPU-sized configurations (under 15 minutes on a 2-core CPU); without it, the full protocols.",
    )
    fidelity_arguments(fid)
    fid.set_defaults(func=run_fidelity)
    for name, (module, text) in BENCHMARKS.items():
        kinds.add_parser(name, help=f"{text} (arguments pass through)", add_help=False, passthrough=True).set_defaults(
            func=run_benchmark, module=module, name=name
        )


def run_fidelity(args: argparse.Namespace) -> int:
    from detprune.bench.fidelity import runner

    try:
        result: dict[str, Any] = runner.run_from_args(args)
    except runner.FidelityError as exc:
        raise DetpruneError(str(exc)) from None
    print(json.dumps(result, indent=2) if args.json else runner.table(result))
    return 1 if result["errors"] else 0


def run_benchmark(args: argparse.Namespace) -> int:
    """``detprune.bench.<module>.main(<args...>)``; its exit status is ours."""
    module = importlib.import_module(f"detprune.bench.{args.module}")
    try:
        return int(module.main(args.script_args) or 0)
    except SystemExit as exc:  # argparse inside the benchmark (--help, a bad flag)
        return exc.code if isinstance(exc.code, int) else 1

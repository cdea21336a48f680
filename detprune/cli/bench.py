"""``detprune bench``: the benchmark scripts of a source checkout, from the CLI.

``detprune bench fidelity`` runs ``benchmarks/fidelity.py`` (each method beside its baseline);
``engine``, ``latency``, ``train-throughput`` and ``seed-tables`` run the matching script with the
remaining arguments (``detprune bench latency --model mobilenet_v2`` = ``python
benchmarks/latency.py --model mobilenet_v2``). ``benchmarks/`` is not part of the installed
package: it is found beside it, in a source checkout or an editable install.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from detprune.errors import DetpruneError

SCRIPTS = {
    "engine": ("engine.py", "the channel-dependency engine vs Torch-Pruning (models pruned, seconds, params kept)"),
    "latency": ("latency.py", "dense vs pruned latency: FLOPs cut, speedup, realized fraction"),
    "train-throughput": ("train_throughput.py", "Trainer images/s, fp32 vs AMP, MFU"),
    "seed-tables": ("seed_tables.py", "the seed paper's tables (NS, NS + sketch, Torch-Pruning) beside its numbers"),
}


def benchmarks_dir() -> Path:
    """``benchmarks/`` beside the package, or a one-line error when this is not a source checkout."""
    import detprune

    folder = Path(detprune.__file__).resolve().parents[1] / "benchmarks"
    if not (folder / "fidelity.py").is_file():
        raise DetpruneError(f"no benchmarks folder at {folder}: the benchmarks ship with the source checkout, "
                            "not with the installed package; clone the repository and `pip install -e .` it")
    return folder


@contextlib.contextmanager
def on_path(folder: Path) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the call (the scripts import their sibling modules)."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def load_fidelity(folder: Path):
    """``benchmarks/fidelity.py`` as a module (imported by path: ``benchmarks`` is not a package)."""
    spec = importlib.util.spec_from_file_location("fidelity", folder / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fidelity"] = module
    spec.loader.exec_module(module)
    return module


class _BenchParser(argparse.ArgumentParser):
    """With ``passthrough=True``, a sub-command that keeps every argument after its name (``--help``
    included) for its script, instead of parsing them."""

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
    p = sub.add_parser(
        "bench",
        help="benchmarks: methods vs their baselines (fidelity), engine, latency, training throughput, seed tables",
        description="Run the benchmark scripts of a source checkout (benchmarks/). `fidelity` prints each "
        "pruning method beside its baseline on one dataset and budget each; the other commands pass their "
        "arguments to the matching script (see `detprune bench <command> --help`).",
    )
    p.set_defaults(func=lambda args: p.print_help() or 0)
    kinds = p.add_subparsers(dest="bench", metavar="<benchmark>", parser_class=_BenchParser)
    fid = kinds.add_parser(
        "fidelity",
        help="each method beside its baseline: ThiNet vs L1, MFP vs its criteria, AutoSlim vs uniform, NS+sketch vs NS",
        description="Test each method's paper claim on our data, beside its baseline at the same budget: ThiNet "
        "vs filter L1 at the same ratio before fine-tuning; MFP vs soft pruning with each single criterion; "
        "AutoSlim's widths vs uniform widths at the same FLOPs; Network Slimming + sketch vs NS at the same "
        "ratio and fine-tuning. --quick runs CPU-sized configurations (under 10 minutes on a 2-core CPU); "
        "the full protocols belong on a GPU.",
    )
    fidelity_arguments(fid)
    fid.set_defaults(func=run_fidelity)
    for name, (script, text) in SCRIPTS.items():
        kinds.add_parser(name, help=f"{text} (benchmarks/{script}; arguments pass through)", add_help=False,
                         passthrough=True).set_defaults(func=run_script, script=script)


def fidelity_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``bench fidelity``, also used by ``benchmarks/fidelity.py`` (here, so that
    ``--help`` works without a checkout)."""
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized configurations (under 10 minutes on a 2-core CPU); default: the full protocols (GPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    p.add_argument("--methods", help="comma-separated subset of thinet,mfp,autoslim,sketch (default: all)")
    p.add_argument("--threads", type=int, help="torch threads inside the runs (default: each method's own; 1 in --quick)")
    p.add_argument("--set", dest="overrides", action="append", metavar="METHOD.KEY=VALUE", default=[],
                   help="override one setting of a method's configuration, e.g. sketch.epochs=2 (repeatable)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / timing lines")


def run_fidelity(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise DetpruneError(f"--threads must be at least 1, got {args.threads}")
    folder = benchmarks_dir()
    with on_path(folder):
        fidelity = load_fidelity(folder)
        try:
            methods = fidelity.parse_methods(args.methods)
            overrides = fidelity.parse_overrides(args.overrides)
            result: dict[str, Any] = fidelity.run_all(methods, args.quick, overrides, args.threads, args.progress)
        except fidelity.FidelityError as exc:
            raise DetpruneError(str(exc)) from None
    print(json.dumps(result, indent=2) if args.json else fidelity.table(result))
    return 1 if result["errors"] else 0


def run_script(args: argparse.Namespace) -> int:
    """``python benchmarks/<script> <args...>`` in a child process; its exit status is ours."""
    path = benchmarks_dir() / args.script
    if not path.is_file():
        raise DetpruneError(f"benchmark script {path} is missing from this checkout")
    return subprocess.call([sys.executable, str(path), *args.script_args])

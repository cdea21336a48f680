"""Fidelity benchmark: each method of issue 8 (and the seed paper's sketch) beside its baseline.

One table (or, with ``--json``, one JSON object with a ``rows`` list) gathered from the row
modules, each run on its own data and budget and each testing its paper's claim on our data:

* ``thinet``   (``fidelity_thinet.py``): ThiNet vs filter L1 at the same ratio, before fine-tuning;
* ``mfp``      (``fidelity_mfp.py``): MFP's criterion switching vs soft pruning with each single criterion;
* ``autoslim`` (``fidelity_autoslim.py``): greedily slimmed widths vs uniform widths at the same FLOPs;
* ``sketch``   (``fidelity_sketch.py``): Network Slimming + sketch vs NS alone, same ratio and fine-tuning.

A row module exposes ``run(quick: bool) -> list[dict]`` with rows ``{"method", "baseline",
"metric", "method_value", "baseline_value", "notes"}`` and its configurations as the dicts
``QUICK`` / ``FULL``, which ``--set METHOD.KEY=VALUE`` overrides. ``--quick`` (VGG16-CIFAR at small
widths, a few thousand images, one torch thread) finishes in under 10 minutes on a 2-core CPU; the
full protocols belong on a GPU. A method that fails is reported (``errors``) and the others still run.

    detprune bench fidelity --quick [--json] [--methods thinet,sketch] [--set sketch.epochs=2]
    detprune bench fidelity --quick --json      # the same, from the CLI
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from typing import Any

from detprune.errors import DetpruneError
from detprune.plugin.options import parse_assignment

METHODS = {name: f"detprune.bench.fidelity.{name}" for name in ("thinet", "mfp", "autoslim", "sketch")}
ROW_KEYS = ("method", "baseline", "metric", "method_value", "baseline_value", "notes")


class FidelityError(ValueError):
    """A bad method name, override or row; ``detprune bench`` turns it into a one-line error."""


def parse_methods(text: str | None) -> list[str]:
    """``"thinet,mfp"`` -> ``["thinet", "mfp"]`` (order kept, duplicates dropped); None -> all methods."""
    if text is None:
        return list(METHODS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise FidelityError(
            f"--methods: unknown method {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"choose from {', '.join(METHODS)}"
        )
    return list(dict.fromkeys(names))


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["sketch.epochs=2", 'thinet.args={"width": 0.125}']`` -> ``{"sketch": {"epochs": 2}, ...}``
    (the ``KEY=VALUE`` grammar of :mod:`detprune.plugin.options`, with ``METHOD.`` in front)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        try:
            key, value = parse_assignment(item, "--set", dotted=True)
        except DetpruneError as exc:
            raise FidelityError(str(exc)) from None
        method, _, field = key.partition(".")
        if method not in METHODS:
            raise FidelityError(f"--set {item!r}: unknown method {method!r}; choose from {', '.join(METHODS)}")
        out.setdefault(method, {})[field] = tuple(value) if isinstance(value, list) else value
    return out


def load_method(name: str):
    """The row module of ``name`` (``detprune.bench.fidelity.<name>``)."""
    return importlib.import_module(METHODS[name])


def changes_for(module, name: str, quick: bool, overrides: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """The settings to change in the module's QUICK or FULL dict (``overrides`` + ``threads``), checked."""
    cfg = getattr(module, "QUICK" if quick else "FULL", None)
    changes = dict(overrides)
    if threads is not None:
        changes["threads"] = threads
    if changes and not isinstance(cfg, dict):
        raise FidelityError(f"method {name!r}: its module has no {'QUICK' if quick else 'FULL'} dict to override")
    unknown = [k for k in changes if k not in cfg]
    if unknown:
        raise FidelityError(
            f"--set {name}.{unknown[0]}: {name} has no setting {unknown[0]!r}; its settings: {', '.join(cfg)}"
        )
    return changes


def check_rows(name: str, rows: Any) -> list[dict[str, Any]]:
    """Every row must carry the six keys; a row module that breaks the contract is an error, not a gap."""
    if not isinstance(rows, list) or not rows:
        raise FidelityError(f"method {name!r}: run() returned {type(rows).__name__} {rows!r:.60}, not a list of rows")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise FidelityError(f"method {name!r}: row {i} lacks {', '.join(missing)}")
    return rows


def run_all(
    methods: list[str],
    quick: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run each method's row module in turn; ``{"rows", "quick", "methods", "seconds", "total_seconds", "errors"}``.

    Each row is the module's, plus ``benchmark`` (the method name that produced it) and ``better``
    (``method``, ``baseline`` or ``tie``, read from the metric's direction)."""
    from tqdm import tqdm

    overrides = overrides or {}
    modules = {name: load_method(name) for name in methods}  # import errors surface before any training
    changes = {name: changes_for(modules[name], name, quick, overrides.get(name, {}), threads) for name in methods}
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    t0 = time.perf_counter()
    bar = tqdm(methods, desc="fidelity", unit="method", disable=not progress, file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        module = modules[name]
        cfg = getattr(module, "QUICK" if quick else "FULL", {})
        old = {k: cfg[k] for k in changes[name]}
        cfg.update(changes[name])
        start = time.perf_counter()
        try:
            rows += [
                {**row, "benchmark": name, "better": better(row)} for row in check_rows(name, module.run(quick=quick))
            ]
        except Exception as exc:  # noqa: BLE001 - one broken method must not hide the others' results
            errors[name] = f"{type(exc).__name__}: {exc}"
            if progress:
                traceback.print_exc(file=sys.stderr)
        finally:
            seconds[name] = round(time.perf_counter() - start, 1)
            cfg.update(old)
        if progress:
            bar.write(
                f"[fidelity] {name}: {seconds[name]:.0f} s" + (f" - FAILED {errors[name]}" if name in errors else ""),
                file=sys.stderr,
            )
    return {
        "rows": rows,
        "quick": quick,
        "methods": methods,
        "threads": threads,
        "seconds": seconds,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "errors": errors,
    }


def better(row: dict[str, Any]) -> str:
    """Which side the row favours: ``method``, ``baseline`` or ``tie`` (``lower=better`` metrics inverted)."""
    m, b = row["method_value"], row["baseline_value"]
    if not all(isinstance(v, (int, float)) for v in (m, b)) or m == b:
        return "tie"
    lower = "lower=better" in str(row["metric"]) or "lower is better" in str(row["metric"])
    return "method" if (m < b) == lower else "baseline"


def table(result: dict[str, Any]) -> str:
    """The rows as one text table, then each distinct note once, then timings and errors."""
    rows = result["rows"]
    cols = [("method", "method"), ("baseline", "baseline"), ("metric", "metric")]
    widths = {k: max([len(h)] + [len(str(r[k])) for r in rows]) for k, h in cols}
    head = "  ".join(f"{h:{widths[k]}}" for k, h in cols) + f"  {'method':>9}  {'baseline':>9}  {'delta':>8}  better"
    lines = [head, "-" * len(head)]
    for r in rows:
        m, b = r["method_value"], r["baseline_value"]
        delta = f"{m - b:+8.4f}" if all(isinstance(v, (int, float)) for v in (m, b)) else f"{'-':>8}"
        lines.append(
            "  ".join(f"{str(r[k]):{widths[k]}}" for k, _ in cols)
            + f"  {_fmt(m):>9}  {_fmt(b):>9}  {delta}  {better(r)}"
        )
    notes = list(dict.fromkeys((r.get("benchmark", r["method"]), r["notes"]) for r in rows if r.get("notes")))
    if notes:
        lines += ["", "notes:"] + [f"  {bench}: {note}" for bench, note in notes]
    mode = "quick" if result.get("quick") else "full"
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.get("seconds", {}).items())
    lines += ["", f"{mode} run, {result.get('total_seconds', 0):.0f} s in all ({timing})"]
    lines += [f"FAILED {name}: {why}" for name, why in result.get("errors", {}).items()]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else str(v)


def fidelity_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``detprune bench fidelity`` (and of ``detprune bench fidelity``)."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized configurations (under 15 minutes on a 2-core CPU); default: the full protocols",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument(
        "--threads", type=int, help="torch threads inside the runs (default: each method's own; 1 in --quick)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="METHOD.KEY=VALUE",
        default=[],
        help="override one setting of a method's configuration, e.g. sketch.epochs=2; VALUE is JSON when "
        "it parses, else text (repeatable)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / timing lines")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="detprune bench fidelity", description=__doc__.splitlines()[0])
    fidelity_arguments(p)
    args = p.parse_args(argv)
    try:
        if args.threads is not None and args.threads < 1:
            raise FidelityError(f"--threads must be at least 1, got {args.threads}")
        result = run_all(
            parse_methods(args.methods), args.quick, parse_overrides(args.overrides), args.threads, args.progress
        )
    except FidelityError as exc:
        print(f"fidelity: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 1 if result["errors"] else 0


def method_main(name: str, argv: list[str] | None = None) -> int:
    """``python -m detprune.bench.fidelity.<name> [--full] [--json] ...``: this table for one method, quick
    unless ``--full``."""
    argv = sys.argv[1:] if argv is None else argv
    quick = [] if "--full" in argv else ["--quick"]
    return main(["--methods", name, *quick, *[a for a in argv if a != "--full"]])


if __name__ == "__main__":
    sys.exit(main())

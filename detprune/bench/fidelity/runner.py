"""Fidelity benchmark: each method's paper claim beside its baseline, paired over seeds.

One table (``--json``: one object with a ``rows`` list) from the row modules, each testing its
paper's claim on our data at an equal budget, every arm of a seed started from the same dense
checkpoint:

* ``sketch``   the seed paper's Table 2: NS at ratio p1 vs NS + sketch at a higher p2, and the
  controls the paper omits (NS@p2 + AdaBN, + β-fold, Procrustes, FilterSketch init, p2 from scratch);
* ``thinet``   ThiNet vs filter L1, random and APoZ at equal parameters, before and after fine-tuning;
* ``mfp``      MFP's criterion switching vs soft pruning with each single criterion;
* ``autoslim`` searched widths vs uniform widths at matched FLOPs, both retrained, at three budgets.

A row module exposes ``QUICK`` / ``FULL`` (dicts; ``seeds`` and ``threads`` among their keys;
``--set METHOD.KEY=VALUE`` overrides any key) and ``run_seed(cfg, seed) -> list[dict]`` with rows
``{"method", "baseline", "metric", "method_value", "baseline_value", "method_params",
"baseline_params", "notes"}`` (``higher_is_better`` optional, default true). The runner runs every
(method, seed) job, ``--jobs`` at a time in separate processes, pairs each row over the seeds and
adds ``seeds``, ``method_values``, ``baseline_values``, the means, ``delta`` (method - baseline),
``ci95`` and ``verdict`` (``holds`` | ``fails`` | ``unresolved``, from the interval:
:mod:`detprune.bench.fidelity.stats`). A method that fails is reported (``errors``); the others run.

    detprune bench fidelity --quick [--json] [--methods thinet,sketch] [--set sketch.seeds=5] [--jobs 2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from detprune.bench.fidelity.stats import paired
from detprune.errors import DetpruneError
from detprune.plugin.options import parse_assignment

METHODS = {name: f"detprune.bench.fidelity.{name}" for name in ("sketch", "thinet", "mfp", "autoslim")}
ROW_KEYS = ("method", "baseline", "metric", "method_value", "baseline_value", "method_params", "baseline_params",
            "notes")  # fmt: skip


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


def config_for(module, name: str, quick: bool, overrides: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """A copy of the module's QUICK or FULL dict with ``overrides`` (and ``threads``) applied, every key checked."""
    base = getattr(module, "QUICK" if quick else "FULL", None)
    if not isinstance(base, dict):
        raise FidelityError(f"method {name!r}: its module has no {'QUICK' if quick else 'FULL'} dict")
    changes = dict(overrides)
    if threads is not None:
        changes["threads"] = threads
    unknown = [k for k in changes if k not in base]
    if unknown:
        raise FidelityError(
            f"--set {name}.{unknown[0]}: {name} has no setting {unknown[0]!r}; its settings: {', '.join(base)}"
        )
    cfg = {**base, **changes}
    if not isinstance(cfg.get("seeds", 1), int) or cfg.get("seeds", 1) < 1:
        raise FidelityError(f"--set {name}.seeds: must be a positive integer, got {cfg.get('seeds')!r}")
    return cfg


def check_rows(name: str, rows: Any) -> list[dict[str, Any]]:
    """Every row must carry the contract keys; a row module that breaks it is an error, not a gap."""
    if not isinstance(rows, list) or not rows:
        raise FidelityError(f"method {name!r}: run_seed() returned {type(rows).__name__} {rows!r:.60}, not rows")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise FidelityError(f"method {name!r}: row {i} lacks {', '.join(missing)}")
    return rows


def _job(name: str, cfg: dict[str, Any], seed: int) -> tuple[list[dict[str, Any]], float]:
    """One (method, seed) run, in this process or a worker: its rows and seconds."""
    from detprune.bench.fidelity.data import bench_threads  # torch and the datasets: not at CLI start-up

    t0 = time.perf_counter()
    with bench_threads(cfg.get("threads")):
        rows = check_rows(name, load_method(name).run_seed(dict(cfg), seed))
    return rows, time.perf_counter() - t0


def aggregate(name: str, per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (method, baseline, metric): the seeds' values paired, with delta, CI and verdict."""
    seeds = sorted(per_seed)
    keys = list(dict.fromkeys((r["method"], r["baseline"], r["metric"]) for s in seeds for r in per_seed[s]))
    out = []
    for key in keys:
        found = {s: next((r for r in per_seed[s] if (r["method"], r["baseline"], r["metric"]) == key), None)
                 for s in seeds}  # fmt: skip
        rows = [found[s] for s in seeds if found[s] is not None]
        higher = bool(rows[0].get("higher_is_better", True))
        stats = paired([r["method_value"] for r in rows], [r["baseline_value"] for r in rows], higher)
        out.append({
            "benchmark": name, "method": key[0], "baseline": key[1], "metric": key[2], "higher_is_better": higher,
            **stats,
            "method_values": [r["method_value"] for r in rows], "baseline_values": [r["baseline_value"] for r in rows],
            "method_params": round(sum(r["method_params"] for r in rows) / len(rows)),
            "baseline_params": round(sum(r["baseline_params"] for r in rows) / len(rows)),
            "seed_list": [s for s in seeds if found[s] is not None], "notes": rows[0]["notes"],
        })  # fmt: skip
    return out


def run_all(methods: list[str], quick: bool = True, overrides: dict[str, dict[str, Any]] | None = None,
            threads: int | None = None, progress: bool = True, jobs: int = 1) -> dict[str, Any]:  # fmt: skip
    """Every (method, seed) job, ``jobs`` at a time; ``{"rows", "quick", "methods", "configs", "seconds",
    "total_seconds", "jobs", "errors"}`` (``seconds``: per method, summed over its seeds)."""
    from tqdm import tqdm

    overrides = overrides or {}
    modules = {name: load_method(name) for name in methods}  # import errors surface before any training
    cfgs = {name: config_for(modules[name], name, quick, overrides.get(name, {}), threads) for name in methods}
    work = [(name, seed) for name in methods for seed in range(cfgs[name].get("seeds", 1))]
    per_seed: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    errors: dict[str, str] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(work), desc="fidelity", unit="run", disable=not progress, file=sys.stderr)

    def done(name: str, seed: int, result: Any = None, exc: BaseException | None = None) -> None:
        if exc is None:
            per_seed[name][seed], took = result
            seconds[name] += took
        else:
            errors.setdefault(name, f"{type(exc).__name__}: {exc}")
            if progress:
                traceback.print_exception(exc, file=sys.stderr)
        bar.update(1)
        bar.set_postfix_str(f"{name} seed {seed}")

    if jobs <= 1:
        for name, seed in work:
            try:
                done(name, seed, _job(name, cfgs[name], seed))
            except Exception as exc:  # noqa: BLE001 - one broken method must not hide the others' results
                done(name, seed, exc=exc)
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_job, name, cfgs[name], seed): (name, seed) for name, seed in work}
            for fut in as_completed(futures):
                name, seed = futures[fut]
                try:
                    done(name, seed, fut.result())
                except Exception as exc:  # noqa: BLE001
                    done(name, seed, exc=exc)
    bar.close()
    rows = [row for name in methods if per_seed[name] for row in aggregate(name, per_seed[name])]
    return {
        "rows": rows,
        "quick": quick,
        "methods": methods,
        "configs": cfgs,
        "jobs": jobs,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_seconds": round(time.perf_counter() - t0, 1),
        "errors": errors,
    }


def table(result: dict[str, Any]) -> str:
    """The rows as one text table (means over seeds, paired delta, its 95 % CI, verdict), then notes and timings."""
    rows = result["rows"]
    cols = [("benchmark", "study"), ("method", "method"), ("baseline", "baseline"), ("metric", "metric")]
    widths = {k: max([len(h)] + [len(str(r[k])) for r in rows]) for k, h in cols}
    head = "  ".join(f"{h:{widths[k]}}" for k, h in cols)
    head += f"  {'method':>8}  {'baseline':>8}  {'delta':>8}  {'95% CI':>19}  {'n':>2}  {'params m/b':>17}  verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        low, high = r["ci95"]
        ci = f"[{low:+.4f}, {high:+.4f}]" if low == low else "-"  # NaN with one seed
        lines.append(
            "  ".join(f"{str(r[k]):{widths[k]}}" for k, _ in cols)
            + f"  {r['method_value']:8.4f}  {r['baseline_value']:8.4f}  {r['delta']:+8.4f}  {ci:>19}  {r['seeds']:>2}"
            + f"  {_short(r['method_params']):>8}/{_short(r['baseline_params']):<8}  {r['verdict']}"
        )
    notes = list(dict.fromkeys((r["benchmark"], r["notes"]) for r in rows if r.get("notes")))
    if notes:
        lines += ["", "notes (first seed):"] + [f"  {bench}: {note}" for bench, note in notes]
    mode = "quick" if result.get("quick") else "full"
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.get("seconds", {}).items())
    lines += ["", f"{mode} run, {result.get('total_seconds', 0):.0f} s wall with {result.get('jobs', 1)} job(s) "
                  f"(method time summed over seeds: {timing})"]  # fmt: skip
    lines += [f"FAILED {name}: {why}" for name, why in result.get("errors", {}).items()]
    return "\n".join(lines)


def _short(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def fidelity_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``detprune bench fidelity`` (and of ``python benchmarks/fidelity.py``)."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU-sized configurations, 3 seeds (under 15 minutes on a 2-core CPU); default: the full protocols",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument(
        "--threads", type=int, help="torch threads inside each run (default: each method's own; 1 in --quick)"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="(method, seed) runs at a time, each in its own process (default: the CPU count, at most 2 in "
        "--quick; 1 runs everything in this process)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="METHOD.KEY=VALUE",
        default=[],
        help="override one setting of a method's configuration, e.g. sketch.seeds=5; VALUE is JSON when "
        "it parses, else text (repeatable)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar / timing lines")


def default_jobs(quick: bool) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, 2) if quick else 1)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Validate the parsed options and run; :class:`FidelityError` for a bad one."""
    if args.threads is not None and args.threads < 1:
        raise FidelityError(f"--threads must be at least 1, got {args.threads}")
    if args.jobs is not None and args.jobs < 1:
        raise FidelityError(f"--jobs must be at least 1, got {args.jobs}")
    jobs = args.jobs if args.jobs is not None else default_jobs(args.quick)
    return run_all(parse_methods(args.methods), args.quick, parse_overrides(args.overrides), args.threads,
                   args.progress, jobs)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="detprune bench fidelity", description=__doc__.splitlines()[0])
    fidelity_arguments(p)
    args = p.parse_args(argv)
    try:
        result = run_from_args(args)
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

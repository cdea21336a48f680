"""``DIR/report.json`` and ``DIR/report.md`` of a prune run: dense vs pruned, and how it was made.

report.json keys (docs/internals.md §5): ``format``, ``model``, ``adapter_args``, ``task``, ``data``,
``pruner``, ``pruner_options``, ``criterion``, ``ratio``, ``compensators``, ``compensator_options``,
``device``, ``metric`` (``map50`` | ``top1``), ``dense`` / ``pruned`` (``params``, ``flops``,
``latency_ms``, ``latency``, ``metrics``), ``before_finetune`` (metrics of the pruned and compensated
model before fine-tuning, or null), ``kept`` (pruned / dense for params, flops, latency), ``plan``
(``meta``, ``groups``, ``channels_before``, ``channels_after``, ``achieved_ratio``, ``widths``),
``layers`` (per conv/linear: ``module``, ``kind``, ``before``, ``after``), ``compensation``
(each compensator's ``report``), ``training`` (per phase: epochs, lr, history), ``timings_s``,
``files``, ``config``, ``detprune_version``.

report.md says each fact once: the criterion from the plan's meta, one achieved ratio over the channels of
the prunable groups (a pruner counting another base is labelled as such), the sparsity ``s`` with the
epochs that applied it, labelled "kept %" columns, a short summary per compensator, and a latency cell
marked ⚠ when its spread (p90 - p10) / median exceeds ``LATENCY_SPREAD_LIMIT``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detprune import __version__
from detprune.pipeline.plots import plot_widths

FORMAT = "detprune-report/1"
METRIC = {"classification": "top1", "detection": "map50"}
_WIDTH_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
# report.md flags a latency cell when (p90 - p10) / median exceeds this: its median is then mostly noise
LATENCY_SPREAD_LIMIT = 0.25
NOISY = "⚠"
_CELL = 60  # characters of a shortened value in a table cell or list
# plan meta keys report.md shows elsewhere (header, sparsity line, achieved-ratio lines), so not in the list
_META_SHOWN = frozenset(
    {"pruner", "criterion", "ratio", "asked_ratio", "achieved_ratio", "channels", "channels_removed", "s"}
)
_NONE = object()  # "option not given": a meta value equal to a given pruner option is not listed again
_SKETCH_OPTIONS = ("alpha", "mode", "variant", "bn", "recalibrate", "calib_batches")


def layer_widths(dense: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Output channels of every conv / conv-transpose / linear layer, before and after."""
    after = dict(pruned.named_modules())
    rows = []
    for name, m in dense.named_modules():
        if isinstance(m, _WIDTH_TYPES):
            p = after.get(name)
            rows.append(
                {"module": name, "kind": type(m).__name__, "before": _out(m), "after": _out(p) if p is not None else 0}
            )
    return rows


def _out(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


def plan_summary(plan: Any, graph: Any) -> dict[str, Any]:
    groups = graph.prunable_groups()
    before = sum(g.size for g in groups)
    after = sum(plan.kept_count(g.id, g.size) for g in groups)
    return {
        "meta": dict(plan.meta),
        "groups": len(groups),
        "groups_pruned": sum(1 for g in groups if g.id in plan.kept and plan.kept_count(g.id, g.size) < g.size),
        "channels_before": before,
        "channels_after": after,
        "achieved_ratio": 1.0 - after / before if before else 0.0,
        "widths": {str(g): dict(w) for g, w in plan.widths.items()},
    }


def jsonable(obj: Any) -> Any:
    """Plain JSON types from tensors, numpy values, paths, dataclasses, sets and tuples."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.item() if obj.numel() == 1 else obj.detach().cpu().tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    return str(obj)


def build(raw: dict[str, Any]) -> dict[str, Any]:
    """The report dict from the pipeline's raw objects (models, plan, graph, config)."""
    dense, pruned = raw["dense"], raw["pruned"]
    metric = METRIC[raw["task"]]
    kept = {k: pruned[k] / dense[k] if dense[k] else None for k in ("params", "flops", "latency_ms")}
    report = {
        k: raw[k]
        for k in (
            "model",
            "adapter_args",
            "task",
            "data",
            "pruner",
            "pruner_options",
            "criterion",
            "ratio",
            "compensators",
            "compensator_options",
            "device",
        )
    }
    report = {
        "format": FORMAT,
        **report,
        "metric": metric,
        "dense": dense,
        "pruned": pruned,
        "before_finetune": raw.get("before_finetune"),
        "kept": kept,
        "plan": plan_summary(raw["plan"], raw["graph"]),
        "layers": layer_widths(raw["dense_model"], raw["pruned_model"]),
        "compensation": raw.get("compensation", {}),
        "training": raw.get("training", {}),
        "timings_s": raw.get("timings_s", {}),
        "config": raw.get("config"),
        "detprune_version": __version__,
    }
    return jsonable(report)


def write_report(
    raw: dict[str, Any], out: str | Path, pruner: Any = None, plots: bool = True, files: dict[str, Path] | None = None
) -> dict[str, Path]:
    """Write report.json, report.md and the plots (widths; the pruner's own, e.g. γ histograms);
    ``files`` already written (pruned.pt) are listed in the report too. Returns every file."""
    out = Path(out)
    report = build(raw)
    files = {**(files or {}), "json": out / "report.json", "md": out / "report.md"}
    if plots:
        files["widths"] = plot_widths(
            report["layers"], out / "widths.png", title=f"{report['model']}: widths before / after {report['pruner']}"
        )
        if pruner is not None:
            made = pruner.plot(out)
            for i, p in enumerate(made if isinstance(made, (list, tuple)) else ([made] if made else [])):
                files[f"pruner_plot_{i}"] = Path(p)
    report["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(report, indent=2))
    files["md"].write_text(markdown(report))
    return files


def _fmt_int(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) else "-"


def _pct(frac: Any, digits: int = 1) -> str:
    """A kept fraction as a bare percentage: the column header carries the unit."""
    return f"{100 * frac:.{digits}f}" if isinstance(frac, (int, float)) else "-"


def _metric(stats: dict[str, Any] | None, metric: str) -> str:
    if not stats:
        return "-"
    metrics = stats.get("metrics", stats)
    v = metrics.get(metric)
    return "-" if v is None else (f"{100 * v:.2f} %" if metric == "top1" else f"{v:.4f}")


def _short(v: Any, width: int = _CELL) -> str:
    """One readable line for any JSON value (no braces or quotes), cut at ``width`` characters."""
    if v is None:
        text = "-"
    elif isinstance(v, bool):
        text = "yes" if v else "no"
    elif isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, dict):
        text = "none" if not v else f"{len(v)} — " + ", ".join(f"{k}: {_short(x, width)}" for k, x in v.items())
    elif isinstance(v, (list, tuple)):
        text = "none" if not v else (f"{len(v)} — " if len(v) > 3 else "") + ", ".join(_short(x, width) for x in v)
    else:
        text = str(v)
    return text if len(text) <= width else text[: width - 1].rstrip(", ") + "…"


def _cell(v: Any, width: int = _CELL) -> str:
    """A markdown table cell: shortened, pipes escaped."""
    return _short(v, width).replace("|", "\\|")


def _options(opts: dict[str, Any] | None, drop: tuple[str, ...] = ()) -> str:
    """``key: value`` pairs, e.g. ``(shortcut: sketch)``; empty when there are none."""
    items = [f"{k}: {_short(v)}" for k, v in (opts or {}).items() if k not in drop]
    return f" ({', '.join(items)})" if items else ""


# ---- header: the method, once --------------------------------------------------------------------


def criterion(r: dict[str, Any]) -> str:
    """The criterion the pruner used: its plan meta says, else the context default (``l1``) it was handed."""
    return (r.get("plan") or {}).get("meta", {}).get("criterion") or r["criterion"]


def sparsity_line(r: dict[str, Any]) -> str:
    """The sparsity weight ``s`` as actually used: only the method-training phase applies it."""
    s = (r.get("plan") or {}).get("meta", {}).get("s", (r.get("pruner_options") or {}).get("s"))
    method = (r.get("training") or {}).get("method") or {}
    history = method.get("history")
    epochs = len(history) if isinstance(history, list) and history else int(method.get("epochs") or 0)
    if s is not None and epochs:
        return f"sparsity s = {_short(s)}, {epochs} sparsity epoch{'s' * (epochs != 1)} trained before pruning"
    if s is not None:
        weights = (r.get("config") or {}).get("weights")
        source = f"; the BN scales are those of `{Path(weights).name}`" if weights else ""
        return f"no sparsity training in this run (s = {_short(s)} not applied{source})"
    if epochs:
        return f"no sparsity training ({epochs} method-training epochs with the pruner's callbacks)"
    return "no sparsity training"


def _header(r: dict[str, Any]) -> list[str]:
    data, lat = r["data"], (r["dense"].get("latency") or {})
    runs = f" of {lat['iters']} runs" if lat.get("iters") else ""
    comps = ", ".join(f"{name}{_options((r['compensator_options'] or {}).get(name))}" for name in r["compensators"])
    return [
        f"# detprune prune report: {r['model']}",
        "",
        (
            f"- data: `{data.get('name')}` ({data.get('val_split')}: {data.get('val_images')} images, "
            f"input {data.get('img_size')})"
        ),
        (
            f"- pruner `{r['pruner']}`{_options(r['pruner_options'], drop=('criterion', 's'))} at ratio {r['ratio']}, "
            f"criterion `{criterion(r)}`"
        ),
        f"- {sparsity_line(r)}",
        f"- compensators: {comps or 'none'}",
        f"- device: {r['device']}; FLOPs are 2·MAC; latency is the median{runs} at batch 1",
        "",
    ]


# ---- dense vs pruned, latency flagged when noisy ---------------------------------------------------


def latency_spread(stats: dict[str, Any] | None) -> float | None:
    """(p90 - p10) / median of a ``Latency.as_dict()``; None when the report has no spread."""
    lat = (stats or {}).get("latency") or {}
    med, p10, p90 = lat.get("median_ms"), lat.get("p10_ms"), lat.get("p90_ms")
    if not all(isinstance(v, (int, float)) for v in (med, p10, p90)) or med <= 0:
        return None
    return (p90 - p10) / med


def _noisy(spread: float | None) -> bool:
    return spread is not None and spread > LATENCY_SPREAD_LIMIT


def _ms(stats: dict[str, Any]) -> str:
    v = stats.get("latency_ms")
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.2f} {NOISY}" if _noisy(latency_spread(stats)) else f"{v:.2f}"


def _latency_note(r: dict[str, Any]) -> list[str]:
    """A footnote for each model whose timings spread too far for its median to mean much."""
    noisy = []
    for name in ("dense", "pruned"):
        spread, lat = latency_spread(r[name]), r[name].get("latency") or {}
        if _noisy(spread):
            noisy.append(
                f"{name} (p90 − p10) / median = {100 * spread:.0f} % (p10 {lat['p10_ms']:.2f} ms, "
                f"p90 {lat['p90_ms']:.2f} ms, {lat.get('iters', '?')} runs)"
            )
    if not noisy:
        return []
    return [
        "",
        (
            f"{NOISY} noisy latency, spread above {100 * LATENCY_SPREAD_LIMIT:.0f} %: {'; '.join(noisy)}. "
            f"Another process was probably busy; rerun with more --latency-iters on an idle machine before "
            f"trusting the latency columns."
        ),
    ]


def _stats_table(r: dict[str, Any]) -> list[str]:
    metric, d, p, k = r["metric"], r["dense"], r["pruned"], r["kept"]
    label = "top-1" if metric == "top1" else "mAP@0.5"
    lines = [
        f"| model | params | kept % | FLOPs | kept % | latency (ms) | kept % | {label} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        (
            f"| dense | {_fmt_int(d['params'])} | 100 | {_fmt_int(d['flops'])} | 100 | {_ms(d)} | 100 "
            f"| {_metric(d, metric)} |"
        ),
    ]
    if r.get("before_finetune"):
        lines.append(
            f"| pruned, before fine-tuning | {_fmt_int(p['params'])} | {_pct(k['params'])} | "
            f"{_fmt_int(p['flops'])} | {_pct(k['flops'])} | - | - | {_metric(r['before_finetune'], metric)} |"
        )
    lines.append(
        f"| pruned | {_fmt_int(p['params'])} | {_pct(k['params'])} | {_fmt_int(p['flops'])} | "
        f"{_pct(k['flops'])} | {_ms(p)} | {_pct(k['latency_ms'], 0)} | {_metric(p, metric)} |"
    )
    return lines + _latency_note(r)


# ---- plan: one achieved ratio ---------------------------------------------------------------------


def _plan(r: dict[str, Any]) -> list[str]:
    plan = r["plan"]
    meta = plan.get("meta") or {}
    before, after = plan["channels_before"], plan["channels_after"]
    lines = [
        "",
        "## Plan",
        "",
        (
            f"Achieved ratio {plan['achieved_ratio']:.3f} (asked {r['ratio']}): {before - after:,} of the "
            f"{before:,} channels in the {plan['groups']} prunable groups removed ({before:,} -> {after:,}); "
            f"{plan['groups_pruned']} groups pruned."
        ),
    ]
    own, n = meta.get("achieved_ratio"), meta.get("channels")
    if isinstance(own, (int, float)) and (
        round(own, 3) != round(plan["achieved_ratio"], 3) or (n is not None and n != before)
    ):
        lines += ["", _own_count(r, own)]
    given = r.get("pruner_options") or {}
    rest = {key: val for key, val in meta.items() if key not in _META_SHOWN and given.get(key, _NONE) != val}
    if rest:
        lines += ["", "Pruner details:", ""] + [f"- {key}: {_short(val, 200)}" for key, val in rest.items()]
    return lines


def _own_count(r: dict[str, Any], own: float) -> str:
    """The pruner's own removed share, labelled with its base, so two numbers never look like one."""
    meta = r["plan"]["meta"]
    name, n, removed = meta.get("pruner", r["pruner"]), meta.get("channels"), meta.get("channels_removed")
    if criterion(r) == "bn-scale" and n is not None:  # Network Slimming scores every BN layer's channels
        return (
            f"The pruner `{name}` counts per BN layer instead: {_fmt_int(removed)} of {_fmt_int(n)} BN channels "
            f"removed ({100 * own:.1f} %); a group with several BN layers counts each channel once per layer."
        )
    base = f"{_fmt_int(removed)} of the {_fmt_int(n)} channels it scored" if n is not None else "its own channel set"
    return f"The pruner `{name}` counts another set: {100 * own:.1f} % of {base} removed."


# ---- compensation: a summary per compensator ------------------------------------------------------


def _sketch(rep: dict[str, Any]) -> list[str]:
    """The ``sketch`` report: its settings, how many groups it rebased, and one row per group."""
    groups = [g for g in rep.get("groups") or [] if isinstance(g, dict)]
    triggered = sum(1 for g in groups if g.get("triggered"))
    rebased = sum(1 for g in groups if g.get("rebased"))
    opts = ", ".join(f"{k} {_short(rep[k])}" for k in _SKETCH_OPTIONS if k in rep)
    lines = [
        f"- options: {opts}" if opts else "- options: -",
        f"- BN statistics: {_short(rep.get('bn_statistics'), 200)}",
        (
            f"- {triggered} of {len(groups)} pruned groups triggered (a producer's layer prune ratio above alpha "
            f"{_short(rep.get('alpha'))}); {rebased} rebased"
        ),
        "",
        "| group | producers | size | kept | layer ratio | triggered / rebased | reason | gram error |",
        "|---:|---|---:|---:|---:|---|---|---:|",
    ]
    for g in groups:
        producers = g.get("producers") or []
        prod = f"`{producers[0]}`" + (f" +{len(producers) - 1}" if len(producers) > 1 else "") if producers else "-"
        state = "rebased" if g.get("rebased") else "triggered, not rebased" if g.get("triggered") else "no"
        err = g.get("gram_error")
        lines.append(
            f"| {_cell(g.get('group'))} | {prod} | {_cell(g.get('size'))} | {_cell(g.get('kept'))} | "
            f"{_ratio(g.get('layer_ratio', g.get('ratio')))} | {state} | {_cell(g.get('reason') or '-')} | "
            f"{f'{err:.2g}' if isinstance(err, (int, float)) else '-'} |"
        )
    return lines


def _ratio(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def _generic(rep: Any) -> list[str]:
    """Any other compensator's report: ``key: value`` lines, values shortened."""
    if rep is None:
        return ["- no report (the compensator keeps none)"]
    if not isinstance(rep, dict):
        return [f"- {_short(rep, 200)}"]
    return [f"- {key}: {_short(val, 200)}" for key, val in rep.items() if key != "compensator"] or ["- empty report"]


def _compensation(r: dict[str, Any]) -> list[str]:
    if not r["compensation"]:
        return []
    lines = ["", "## Compensation"]
    for name, rep in r["compensation"].items():
        is_sketch = isinstance(rep, dict) and rep.get("compensator", name) == "sketch"
        lines += ["", f"### `{name}`", ""] + (_sketch(rep) if is_sketch else _generic(rep))
    return lines


# ---- the rest -------------------------------------------------------------------------------------


def _training(r: dict[str, Any]) -> list[str]:
    if not r["training"]:
        return []
    lines = ["", "## Training", "", "| phase | epochs | lr | last train loss |", "|---|---:|---:|---:|"]
    for phase, t in r["training"].items():
        last = (t.get("history") or [{}])[-1].get("train_loss")
        lines.append(f"| {phase} | {t.get('epochs')} | {t.get('lr')} | {'-' if last is None else f'{last:.4g}'} |")
    return lines


def markdown(r: dict[str, Any]) -> str:
    """A human-readable report.md: each fact once, labelled (the JSON keeps everything)."""
    lines = _header(r) + _stats_table(r) + _plan(r) + _compensation(r) + _training(r)
    lines += ["", "## Layer widths", "", "| layer | kind | before | after | kept % |", "|---|---|---:|---:|---:|"]
    lines += [
        f"| `{row['module']}` | {row['kind']} | {row['before']} | {row['after']} | "
        f"{_pct(row['after'] / max(row['before'], 1), 0)} |"
        for row in r["layers"]
    ]
    lines += ["", "## Timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in r["timings_s"].items()]
    lines += ["", "## Files", ""] + [f"- {key}: `{val}`" for key, val in r.get("files", {}).items()]
    return "\n".join(lines) + "\n"

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
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "detprune-report/1"
METRIC = {"classification": "top1", "detection": "map50"}
_WIDTH_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def layer_widths(dense: nn.Module, pruned: nn.Module) -> list[dict[str, Any]]:
    """Output channels of every conv / conv-transpose / linear layer, before and after."""
    after = dict(pruned.named_modules())
    rows = []
    for name, m in dense.named_modules():
        if isinstance(m, _WIDTH_TYPES):
            p = after.get(name)
            rows.append({"module": name, "kind": type(m).__name__, "before": _out(m),
                         "after": _out(p) if p is not None else 0})
    return rows


def _out(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)


def plan_summary(plan: Any, graph: Any) -> dict[str, Any]:
    groups = graph.prunable_groups()
    before = sum(g.size for g in groups)
    after = sum(plan.kept_count(g.id, g.size) for g in groups)
    return {"meta": dict(plan.meta), "groups": len(groups), "groups_pruned": sum(1 for g in groups if g.id in plan.kept
                                                                               and plan.kept_count(g.id, g.size) < g.size),
            "channels_before": before, "channels_after": after,
            "achieved_ratio": 1.0 - after / before if before else 0.0,
            "widths": {str(g): dict(w) for g, w in plan.widths.items()}}


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
    from detprune import __version__

    dense, pruned = raw["dense"], raw["pruned"]
    metric = METRIC[raw["task"]]
    kept = {k: pruned[k] / dense[k] if dense[k] else None for k in ("params", "flops", "latency_ms")}
    report = {k: raw[k] for k in ("model", "adapter_args", "task", "data", "pruner", "pruner_options", "criterion",
                                  "ratio", "compensators", "compensator_options", "device")}
    report = {"format": FORMAT, **report, "metric": metric, "dense": dense, "pruned": pruned,
              "before_finetune": raw.get("before_finetune"), "kept": kept,
              "plan": plan_summary(raw["plan"], raw["graph"]),
              "layers": layer_widths(raw["dense_model"], raw["pruned_model"]),
              "compensation": raw.get("compensation", {}), "training": raw.get("training", {}),
              "timings_s": raw.get("timings_s", {}), "config": raw.get("config"), "detprune_version": __version__}
    return jsonable(report)


def write_report(raw: dict[str, Any], out: str | Path, pruner: Any = None, plots: bool = True,
                 files: dict[str, Path] | None = None) -> dict[str, Path]:
    """Write report.json, report.md and the plots (widths; the pruner's own, e.g. γ histograms);
    ``files`` already written (pruned.pt) are listed in the report too. Returns every file."""
    out = Path(out)
    report = build(raw)
    files = {**(files or {}), "json": out / "report.json", "md": out / "report.md"}
    if plots:
        from detprune.plots import plot_widths

        files["widths"] = plot_widths(report["layers"], out / "widths.png",
                                      title=f"{report['model']}: widths before / after {report['pruner']}")
        if pruner is not None and hasattr(pruner, "plot"):
            made = pruner.plot(out)
            for i, p in enumerate(made if isinstance(made, (list, tuple)) else ([made] if made else [])):
                files[f"pruner_plot_{i}"] = Path(p)
    report["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(report, indent=2))
    files["md"].write_text(markdown(report))
    return files


def _fmt_int(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) else "-"


def _metric(stats: dict[str, Any] | None, metric: str) -> str:
    if not stats:
        return "-"
    metrics = stats.get("metrics", stats)
    v = metrics.get(metric)
    return "-" if v is None else (f"{100 * v:.2f} %" if metric == "top1" else f"{v:.4f}")


def markdown(r: dict[str, Any]) -> str:
    """A human-readable report.md."""
    metric, d, p = r["metric"], r["dense"], r["pruned"]
    label = "top-1" if metric == "top1" else "mAP@0.5"
    lines = [f"# detprune prune report: {r['model']}", "",
             f"- data: `{r['data'].get('name')}` ({r['data'].get('val_split')}: {r['data'].get('val_images')} images, "
             f"input {r['data'].get('img_size')})",
             f"- pruner `{r['pruner']}` {r['pruner_options'] or ''} at ratio {r['ratio']}, criterion `{r['criterion']}`",
             f"- compensators: {', '.join(r['compensators']) or 'none'} {r['compensator_options'] or ''}",
             f"- device: {r['device']}; FLOPs are 2·MAC; latency is the median at batch 1", "",
             f"| model | params | FLOPs | latency (ms) | {label} |", "|---|---:|---:|---:|---:|",
             f"| dense | {_fmt_int(d['params'])} | {_fmt_int(d['flops'])} | {d['latency_ms']:.2f} | {_metric(d, metric)} |"]
    if r.get("before_finetune"):
        lines.append(f"| pruned, before fine-tuning | {_fmt_int(p['params'])} | {_fmt_int(p['flops'])} | - | "
                     f"{_metric(r['before_finetune'], metric)} |")
    k = r["kept"]
    lines += [f"| pruned | {_fmt_int(p['params'])} ({100 * k['params']:.1f} %) | {_fmt_int(p['flops'])} "
              f"({100 * k['flops']:.1f} %) | {p['latency_ms']:.2f} ({100 * k['latency_ms']:.0f} %) | {_metric(p, metric)} |",
              "", "## Plan", ""]
    plan = r["plan"]
    lines.append(f"{plan['groups_pruned']} of {plan['groups']} prunable channel groups pruned; channels "
                 f"{plan['channels_before']:,} -> {plan['channels_after']:,} (achieved ratio {plan['achieved_ratio']:.3f}, "
                 f"asked {r['ratio']}).")
    lines += [""] + [f"- {key}: `{json.dumps(val)[:300]}`" for key, val in plan["meta"].items()]
    if r["compensation"]:
        lines += ["", "## Compensation", ""]
        for name, rep in r["compensation"].items():
            lines.append(f"- `{name}`: `{json.dumps(rep)[:1500]}`")
    if r["training"]:
        lines += ["", "## Training", "", "| phase | epochs | lr | last train loss |", "|---|---:|---:|---:|"]
        for phase, t in r["training"].items():
            last = (t.get("history") or [{}])[-1].get("train_loss")
            lines.append(f"| {phase} | {t.get('epochs')} | {t.get('lr')} | {'-' if last is None else f'{last:.4g}'} |")
    lines += ["", "## Layer widths", "", "| layer | kind | before | after | kept |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{row['module']}` | {row['kind']} | {row['before']} | {row['after']} | "
              f"{100 * row['after'] / max(row['before'], 1):.0f} % |" for row in r["layers"]]
    lines += ["", "## Timings", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in r["timings_s"].items()]
    lines += ["", "## Files", ""] + [f"- {key}: `{val}`" for key, val in r.get("files", {}).items()]
    return "\n".join(lines) + "\n"

"""A model adapter and its model from a weights file, with the build arguments the file records.

``eval``, ``train`` and ``prune`` all start here, so a file is read the same way everywhere:

* a pruned recipe (``pruned.pt``): rebuilt by :mod:`detprune.recipe` with the adapter and the
  arguments it stores (anchors, width, depth, classes: the decode then matches training);
* a trainer checkpoint (``last.pt`` / ``best.pt``): its ``meta`` records the adapter, its
  arguments and, for a pruned model, the recipe of its architecture;
* a plain ``state_dict`` or ``{"model": state_dict}``: loaded into ``adapter.build()``; a
  mismatch names the first tensors that differ and the likely cause (width, depth, classes).

Arguments the file records win over the card's; a flag that contradicts them is an error, never
silently ignored. ``--img-size`` may differ (anchors are rescaled with it).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import detprune
from detprune.data import DEFAULT_IMG_SIZE
from detprune.data.anchors import card_anchors
from detprune.errors import DetpruneError
from detprune.recipe import parse_recipe, rebuild
from detprune.training.checkpoint import FORMAT as CKPT_FORMAT
from detprune.training.checkpoint import load_checkpoint

#: keys of adapter args that fix the architecture (a flag may not contradict the file on these)
_SIZE_KEYS = ("img_size",)


@dataclass
class LoadedModel:
    """The adapter to train/decode with, the model, and where it came from."""

    adapter: Any
    model: nn.Module
    source: str  # "recipe" | "checkpoint" | "state_dict" | "new"
    recipe: dict[str, Any] | None = None  # the pruned architecture's recipe, when there is one


def adapter_args(
    name: str, card: Any, img_size: int | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build arguments from the card (classes, size, anchors) that the adapter's constructor takes,
    plus ``overrides`` (``--width``, ``--depth``, ``--model-arg``: passed even when unknown, so the
    adapter's own error names the option)."""
    factory = detprune.plugins().get("adapter", name).factory
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    size = img_size or card.img_size or DEFAULT_IMG_SIZE.get(card.task) or _default(params, "img_size")
    anchors = card_anchors(card, size) if size else card.extra.get("anchors")  # pixels of the input size
    offered = {"num_classes": card.num_classes, "img_size": size, "anchors": anchors}
    args = {k: v for k, v in offered.items() if v is not None and (takes_all or k in params)}
    args.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return args


def _default(params: Any, name: str) -> Any:
    p = params.get(name) if hasattr(params, "get") else None
    return None if p is None or p.default is inspect.Parameter.empty else p.default


def open_model(
    name: str,
    card: Any,
    weights: str | Path | None = None,
    img_size: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> LoadedModel:
    """The adapter ``name`` for ``card`` and its model: fresh, or from ``weights`` (see the module docstring)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if weights is None:
        adapter = _adapter(name, adapter_args(name, card, img_size, overrides), card)
        return LoadedModel(adapter, adapter.build(), "new")
    path = Path(weights)
    obj = _read(path)
    recorded, recipe, state, source = _recorded(obj, path)
    if recorded is None:
        adapter = _adapter(name, adapter_args(name, card, img_size, overrides), card)
        model = adapter.build()
        load_state_checked(model, state, path, adapter)
        return LoadedModel(adapter, model, source)
    args = _reconcile(name, card, path, recorded, img_size, overrides)
    adapter = _adapter(name, args, card)
    if recipe is None:
        model = adapter.build()
        load_state_checked(model, state, path, adapter)
    else:
        model = rebuild(recipe, state, str(path))
    return LoadedModel(adapter, model, source, recipe)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise DetpruneError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled objects, truncation, foreign formats
        load_checkpoint(path)  # raises the checkpoint module's message (truncated? an intact last.prev.pt?)
        raise DetpruneError(f"{path}: cannot read it with torch.load(weights_only=True): {exc}") from None


def _recorded(obj: Any, path: Path) -> tuple[tuple[str, dict] | None, dict | None, dict, str]:
    """(adapter name and args the file records, recipe, state_dict, kind) of a loaded file."""
    if isinstance(obj, dict) and {"recipe", "state_dict"} <= set(obj):
        recipe = parse_recipe(obj["recipe"], str(path))
        spec = recipe["builder"]
        if "adapter" not in spec:
            raise DetpruneError(
                f"{path}: this recipe rebuilds its model with the Python callable '{spec.get('callable')}'; "
                f"the command line runs only registered model adapters. Load it in Python: detprune.load(path, "
                f"trusted=['{spec.get('callable')}'])"
            )
        return (spec["adapter"], dict(spec.get("args", {}))), recipe, obj["state_dict"], "recipe"
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        recipe = parse_recipe(meta["recipe"], f"{path}: meta") if meta.get("recipe") else None
        recorded = None
        if isinstance(meta.get("model"), str) and isinstance(meta.get("adapter_args"), dict):
            recorded = (meta["model"], dict(meta["adapter_args"]))
        elif recipe is not None and "adapter" in recipe["builder"]:
            recorded = (recipe["builder"]["adapter"], dict(recipe["builder"].get("args", {})))
        kind = "checkpoint" if obj.get("format") == CKPT_FORMAT else "state_dict"
        return recorded, recipe, obj["model"], kind
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None, None, obj, "state_dict"
    keys = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
    raise DetpruneError(f"{path}: not a pruned recipe, trainer checkpoint or state_dict (found {keys})")


def _reconcile(
    name: str, card: Any, path: Path, recorded: tuple[str, dict], img_size: int | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """The file's build arguments, checked against --model, the card's classes and the flags."""
    rec_name, args = recorded
    if rec_name != name:
        raise DetpruneError(f"{path} holds a '{rec_name}' model, not '{name}' (--model); pass --model {rec_name}")
    n = args.get("num_classes")
    if n is not None and n != card.num_classes:
        raise DetpruneError(
            f"{path}: the model predicts {n} classes, but {card.source or card.name} has "
            f"{card.num_classes} ({', '.join(card.classes[:12])}); use the dataset it was trained on"
        )
    for key, value in overrides.items():
        if key in args and args[key] != value and key not in _SIZE_KEYS:
            raise DetpruneError(
                f"{path} was built with {key}={args[key]!r}; the option {key}={value!r} contradicts it "
                "(leave it out: the file's value is used)"
            )
        args.setdefault(key, value)
    if img_size and args.get("img_size") and img_size != args["img_size"]:
        k = img_size / float(args["img_size"])
        if args.get("anchors"):  # anchors are pixels of the input size
            args["anchors"] = [[round(float(w) * k, 2), round(float(h) * k, 2)] for w, h in args["anchors"]]
        args["img_size"] = img_size
    return args


def _adapter(name: str, args: dict[str, Any], card: Any) -> Any:
    adapter = detprune.plugins().adapter(name, **args)
    if getattr(adapter, "task", card.task) != card.task:
        raise DetpruneError(
            f"model '{name}' is a {adapter.task} model but {card.source or card.name} is a {card.task} dataset"
        )
    return adapter


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str, adapter: Any = None) -> None:
    """``model.load_state_dict(state)``, or an error listing the first mismatches and their likely cause."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        (k, list(state[k].shape), list(v.shape))
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        model.load_state_dict(state)
        return
    parts = []
    if shapes:
        parts.append(
            "; ".join(f"'{k}' is {a} in the file, {b} in the model" for k, a, b in shapes[:3])
            + (f" (and {len(shapes) - 3} more)" if len(shapes) > 3 else "")
        )
    if missing:
        parts.append(f"missing {_few(missing)}")
    if unexpected:
        parts.append(f"unexpected {_few(unexpected)}")
    name = getattr(adapter, "name", type(adapter).__name__ if adapter is not None else "the model")
    built = {k: v for k, v in (getattr(adapter, "args", None) or {}).items() if k in ("num_classes", "width", "depth")}
    raise DetpruneError(
        f"{path}: weights do not fit model '{name}' built with {built}: {'; '.join(parts)}. "
        f"Likely cause: {likely_cause(model, shapes, missing, unexpected, adapter)}"
    )


def likely_cause(model: nn.Module, shapes: list, missing: list, unexpected: list, adapter: Any) -> str:
    """A guess at why a state_dict does not fit: another width, depth, class count, or a pruned model."""
    outputs: set[str] = set()
    if adapter is not None and hasattr(adapter, "protected"):
        try:
            outputs = set(adapter.protected(model))
        except Exception:  # noqa: BLE001 - a guess only
            outputs = set()
    if shapes and all(k.rsplit(".", 1)[0] in outputs for k, _, _ in shapes):
        return "another number of classes (only the output layers differ): use the dataset the weights were trained on"
    if missing or unexpected:
        return "another depth or model family (the layer names differ): check --model and --depth / --model-arg"
    ratios = sorted(a[0] / b[0] for k, a, b in shapes if a and b and b[0] and k.rsplit(".", 1)[0] not in outputs)
    if ratios:
        r = ratios[len(ratios) // 2]
        if r != 1 and sum(abs(x / r - 1) <= 0.25 for x in ratios) >= 0.8 * len(ratios):  # rounding of small widths
            return f"another width: the file's layers are {r:.3g}x as wide as this model's (adjust --width)"
    return (
        "a pruned model (layer widths differ unevenly): load it from its recipe file (pruned.pt) or a checkpoint "
        "written by detprune train"
    )


def _few(names: list[str], n: int = 3) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return "[" + ", ".join(names[:n]) + "]" + more

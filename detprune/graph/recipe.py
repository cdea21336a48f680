"""Save a pruned model as a recipe plus weights; load it by rebuilding and replaying.

The file holds ``{"recipe": json, "state_dict": ...}`` and no pickled module, so it loads with
``torch.load(weights_only=True)``. The recipe names how to build the dense model (a registered
adapter and its arguments, or an importable callable), the input shapes it was traced at, the
plan, a checksum of the plan and the graph's fingerprint: loading re-traces the dense model,
refuses a model whose structure differs, replays the plan and loads the weights.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from detprune.errors import DetpruneError, GraphError, RecipeError
from detprune.types import PruningPlan

FORMAT = "detprune-recipe/1"


def _plan_digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _leaf_names(leaves) -> list[str]:
    return [lf if isinstance(lf, str) else f"{lf.__module__}:{lf.__qualname__}" for lf in leaves]


def _leaves_back(names: list[str]) -> tuple[Any, ...]:
    out = []
    for n in names:
        out.append(_import(n) if ":" in n else n)
    return tuple(out)


def _import(target: str) -> Any:
    mod, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"cannot import '{target}': {exc}") from exc
    return obj


def save(result, path: str | os.PathLike, builder: Any = None) -> Path:
    """Write ``result`` (a :class:`detprune.PruneResult`) to ``path`` atomically."""
    from detprune import __version__
    from detprune.api import builder_spec

    spec = builder_spec(builder) or result.builder
    if spec is None:
        raise RecipeError("cannot save a recipe without knowing how to rebuild the dense model: pass builder= to "
                          "detprune.prune or detprune.save (an adapter, {'adapter': name, 'args': {...}} or "
                          "{'callable': 'pkg.mod:fn', 'args': {...}})")
    plan = result.plan.to_dict()
    graph = result.graph
    recipe = {
        "format": FORMAT,
        "builder": spec,
        "input_shapes": [list(t.shape) for t in graph.example_inputs],
        "input_dtypes": [str(t.dtype).replace("torch.", "") for t in graph.example_inputs],
        "protected": list(graph.protected),
        "leaves": _leaf_names(graph.leaves),
        "plan": plan,
        "plan_sha256": _plan_digest(plan),
        "fingerprint": graph.fingerprint(),
        "training": bool(result.model.training),
        "detprune_version": __version__,
    }
    payload = {"recipe": json.dumps(recipe), "state_dict": result.model.state_dict()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_recipe(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The recipe and the state_dict stored in ``path``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise RecipeError(f"{path}: not a detprune recipe file ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not {"recipe", "state_dict"} <= set(data):
        raise RecipeError(f"{path}: not a detprune recipe file (expected keys 'recipe' and 'state_dict')")
    try:
        recipe = json.loads(data["recipe"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{path}: field 'recipe' is not valid JSON: {exc}") from exc
    if recipe.get("format") != FORMAT:
        raise RecipeError(f"{path}: field 'format' is {recipe.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("builder", "input_shapes", "plan", "plan_sha256", "fingerprint") if k not in recipe]
    if missing:
        raise RecipeError(f"{path}: recipe lacks field(s) {', '.join(missing)}")
    return recipe, data["state_dict"]


def _build_dense(spec: dict[str, Any], where: str) -> nn.Module:
    args = spec.get("args", {})
    try:
        if "adapter" in spec:
            from detprune.host import plugins

            return plugins().adapter(spec["adapter"], **args).build()
        return _import(spec["callable"])(**args)
    except DetpruneError as exc:
        raise RecipeError(f"{where}: cannot rebuild the dense model from builder {spec}: {exc}") from exc


def load(path: str | os.PathLike, build: Callable[[], nn.Module] | dict[str, Any] | None = None) -> nn.Module:
    """Rebuild the dense model, replay the saved plan and load the pruned weights.

    :param build: overrides the recipe's builder: a zero-argument callable returning the dense
        model, or a builder spec like the one ``detprune.prune(builder=...)`` takes.
    """
    from detprune.api import builder_spec
    from detprune.graph.trace import trace

    recipe, state = read_recipe(path)
    if callable(build) and not isinstance(build, dict):
        dense, desc = build(), "the given build()"
    else:
        spec = builder_spec(build) or recipe["builder"]
        dense, desc = _build_dense(spec, str(path)), f"builder {spec}"
    dtypes = recipe.get("input_dtypes") or ["float32"] * len(recipe["input_shapes"])
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(torch.rand(s, generator=gen).to(getattr(torch, d)) for s, d in zip(recipe["input_shapes"], dtypes))
    try:
        graph = trace(dense, inputs, protected=tuple(recipe.get("protected", ())), leaves=_leaves_back(recipe.get("leaves", [])))
    except GraphError as exc:
        raise RecipeError(f"{path}: cannot trace the model built by {desc}: {exc}") from exc
    if graph.fingerprint() != recipe["fingerprint"]:
        raise RecipeError(f"{path}: the model built by {desc} does not have the structure the plan was made for "
                          f"(fingerprint {graph.fingerprint()} != {recipe['fingerprint']}); pass the builder that "
                          f"made it: detprune.load(path, build=...)")
    if _plan_digest(recipe["plan"]) != recipe["plan_sha256"]:
        raise RecipeError(f"{path}: field 'plan' was modified after saving (its checksum does not match 'plan_sha256')")
    try:
        plan = PruningPlan.from_dict(recipe["plan"])
        pruned = graph.apply(dense, plan, inplace=True, check=False)
    except (GraphError, ValueError, TypeError) as exc:
        raise RecipeError(f"{path}: field 'plan' does not fit the model: {exc}") from exc
    try:
        pruned.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise RecipeError(f"{path}: the saved weights do not fit the pruned model: {detail[:300]}") from exc
    return pruned.train(bool(recipe.get("training", False)))

"""Save a pruned model as a recipe plus weights; load it by rebuilding and replaying — running no
code that the file names.

The file holds ``{"recipe": json, "state_dict": ...}`` and no pickled object, so it loads with
``torch.load(weights_only=True)``. The recipe says how to build the dense model and which plans to
replay on it, in order (one stage per pruning pass: a model pruned twice has two)::

    {"format": "detprune-recipe/2",
     "builder": {"adapter": "yolov3", "args": {...}},          # a registered model adapter
     "stages": [{"input_shapes", "input_dtypes", "protected", "leaves", "plan", "fingerprint"}, ...],
     "training": false, "detprune_version": "...", "sha256": "<digest of everything above>"}

Loading a file is safe by construction: the dense model is rebuilt only through a *registered*
model adapter (plugins the user installed), never through a Python path read from the file. A
recipe whose builder is ``{"callable": "pkg.mod:fn"}`` (``detprune.prune(builder="pkg.mod:fn")``)
loads only when the caller names that callable in ``trusted=`` or passes ``build=``. Leaf classes
are matched against the rebuilt model's own module classes, never imported. The digest is checked
before anything is built, each stage's graph fingerprint before its plan is replayed, and the
weights load strictly at the end; every mismatch is a :class:`RecipeError` naming file and field.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detprune import __version__
from detprune.errors import DetpruneError, GraphError, RecipeError
from detprune.graph import trace
from detprune.graph.plan import PruningPlan
from detprune.plugin.host import plugins
from detprune.plugin.protocols import unwrap

FORMAT = "detprune-recipe/2"
FORMAT_V1 = "detprune-recipe/1"
#: attribute a loaded (or pruned) model carries, so pruning it again chains the stages
ATTR = "_detprune_recipe"
_STAGE_KEYS = ("input_shapes", "plan", "fingerprint")


def digest(recipe: dict[str, Any]) -> str:
    """sha256 of the recipe's JSON without its own ``sha256`` field (sorted keys)."""
    body = {k: v for k, v in recipe.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def builder_spec(builder: Any) -> dict[str, Any] | None:
    """Normalise ``builder`` to ``{"adapter": name, "args": {...}}`` or ``{"callable": "mod:fn", "args": {...}}``."""
    if builder is None:
        return None
    if isinstance(builder, dict):
        if not ({"adapter", "callable"} & set(builder)):
            raise ValueError(f"builder must name an 'adapter' or a 'callable', got keys {sorted(builder)}")
        return {**builder, "args": dict(builder.get("args", {}))}
    if isinstance(builder, str):
        key = "callable" if ":" in builder else "adapter"
        return {key: builder, "args": {}}
    name, args = getattr(builder, "name", None), getattr(builder, "args", None)
    if isinstance(args, dict) and not isinstance(name, str):
        name = _registered_name(builder)
    if isinstance(name, str) and isinstance(args, dict):  # a model adapter instance
        return {"adapter": name, "args": dict(args)}
    raise ValueError(
        f"cannot record how to rebuild the model from builder {builder!r}: pass an adapter instance, "
        "{'adapter': name, 'args': {...}} or {'callable': 'pkg.mod:fn', 'args': {...}}"
    )


def _registered_name(adapter: Any) -> str | None:
    """The registered name of an adapter instance without a ``name`` attribute (its factory's entry)."""
    for entry in plugins().entries("adapter"):
        if entry.factory is type(unwrap(adapter)):
            return entry.name
    return None


def stage_of(graph: Any, plan: PruningPlan) -> dict[str, Any]:
    """One pruning pass as the recipe stores it: the inputs it was traced at, the plan, the fingerprint."""
    return {
        "input_shapes": [list(t.shape) for t in graph.example_inputs],
        "input_dtypes": [str(t.dtype).replace("torch.", "") for t in graph.example_inputs],
        "protected": list(graph.protected),
        "leaves": [lf if isinstance(lf, str) else f"{lf.__module__}:{lf.__qualname__}" for lf in graph.leaves],
        "plan": plan.to_dict(),
        "fingerprint": graph.fingerprint(),
    }


def mark(
    pruned: nn.Module, parent: dict[str, Any] | None, builder: dict[str, Any] | None, graph: Any, plan: PruningPlan
) -> None:
    """Record on ``pruned`` how to rebuild it (builder + stages so far), so pruning it again, or a
    checkpoint of it, can chain; without a known builder the stale record of a copied parent is dropped."""
    spec = parent["builder"] if parent else builder
    if spec is None:
        if hasattr(pruned, ATTR):
            delattr(pruned, ATTR)
        return
    stages = [*(parent["stages"] if parent else []), stage_of(graph, plan)]
    setattr(pruned, ATTR, {"format": FORMAT, "builder": spec, "stages": stages})


def make_recipe(builder: dict[str, Any], stages: list[dict[str, Any]], training: bool = False) -> dict[str, Any]:
    """A complete recipe with its digest."""
    recipe = {
        "format": FORMAT,
        "builder": builder,
        "stages": stages,
        "training": bool(training),
        "detprune_version": __version__,
    }
    recipe["sha256"] = digest(recipe)
    return recipe


def recipe_of(result: Any, builder: Any = None) -> dict[str, Any]:
    """The recipe of a :class:`detprune.PruneResult`: its parent's stages (a model loaded from a recipe
    and pruned again) followed by this pass."""
    parent = result.parent
    spec = builder_spec(builder) or result.builder
    if parent is not None:
        if spec is not None and spec != parent["builder"]:
            raise RecipeError(
                f"the model was loaded from a recipe built by {parent['builder']}; builder {spec} cannot rebuild it"
            )
        spec = parent["builder"]
    if spec is None:
        raise RecipeError(
            "cannot save a recipe without knowing how to rebuild the dense model: pass builder= to "
            "detprune.prune or detprune.save (an adapter, {'adapter': name, 'args': {...}} or "
            "{'callable': 'pkg.mod:fn', 'args': {...}})"
        )
    stages = [*(parent["stages"] if parent else []), stage_of(result.graph, result.plan)]
    return make_recipe(spec, stages, training=result.model.training)


def save(result: Any, path: str | os.PathLike, builder: Any = None) -> Path:
    """Write ``result`` (a :class:`detprune.PruneResult`) to ``path`` atomically (temp file + rename)."""
    recipe = recipe_of(result, builder)
    setattr(result.model, ATTR, recipe)
    return write(recipe, result.model.state_dict(), path)


def write(recipe: dict[str, Any], state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """``{"recipe": json, "state_dict"}`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"recipe": json.dumps(recipe), "state_dict": state_dict}, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a saved model is as readable as any file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_recipe(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked recipe (format 2; format-1 files are upgraded) and the state_dict stored in ``path``.

    Checks the structure and the digest; builds nothing and imports nothing.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
        raise RecipeError(
            f"{path}: not a detprune recipe file ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    if not isinstance(data, dict) or not {"recipe", "state_dict"} <= set(data):
        raise RecipeError(f"{path}: not a detprune recipe file (expected keys 'recipe' and 'state_dict')")
    return parse_recipe(data["recipe"], str(path)), data["state_dict"]


def parse_recipe(text: Any, where: str) -> dict[str, Any]:
    """A recipe from its JSON text, checked field by field (see :func:`read_recipe`)."""
    try:
        recipe = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{where}: field 'recipe' is not valid JSON: {exc}") from exc
    if not isinstance(recipe, dict):
        raise RecipeError(f"{where}: field 'recipe' is not a JSON object")
    if recipe.get("format") == FORMAT_V1:
        return _upgrade_v1(recipe, where)
    if recipe.get("format") != FORMAT:
        raise RecipeError(f"{where}: field 'format' is {recipe.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in ("builder", "stages", "sha256") if k not in recipe]
    if missing:
        raise RecipeError(f"{where}: recipe lacks field(s) {', '.join(missing)}")
    if recipe["sha256"] != digest(recipe):
        raise RecipeError(f"{where}: the recipe was modified after saving (its checksum does not match field 'sha256')")
    _check_builder(recipe["builder"], where)
    if not isinstance(recipe["stages"], list) or not recipe["stages"]:
        raise RecipeError(f"{where}: field 'stages' must be a non-empty list")
    for i, stage in enumerate(recipe["stages"]):
        lacking = [k for k in _STAGE_KEYS if not isinstance(stage, dict) or k not in stage]
        if lacking:
            raise RecipeError(f"{where}: stages[{i}] lacks field(s) {', '.join(lacking)}")
    return recipe


def _upgrade_v1(recipe: dict[str, Any], where: str) -> dict[str, Any]:
    """A format-1 recipe (one plan, ``plan_sha256``) as a one-stage format-2 recipe."""
    missing = [k for k in ("builder", "input_shapes", "plan", "plan_sha256", "fingerprint") if k not in recipe]
    if missing:
        raise RecipeError(f"{where}: recipe lacks field(s) {', '.join(missing)}")
    plan_digest = hashlib.sha256(json.dumps(recipe["plan"], sort_keys=True).encode()).hexdigest()
    if plan_digest != recipe["plan_sha256"]:
        raise RecipeError(
            f"{where}: field 'plan' was modified after saving (its checksum does not match 'plan_sha256')"
        )
    _check_builder(recipe["builder"], where)
    stage = {k: recipe.get(k) for k in ("input_shapes", "input_dtypes", "protected", "leaves", "plan", "fingerprint")}
    return {
        "format": FORMAT,
        "builder": recipe["builder"],
        "stages": [stage],
        "training": recipe.get("training", False),
        "detprune_version": recipe.get("detprune_version"),
    }


def _check_builder(spec: Any, where: str) -> None:
    ok = (
        isinstance(spec, dict)
        and isinstance(spec.get("args", {}), dict)
        and (isinstance(spec.get("adapter"), str) or isinstance(spec.get("callable"), str))
    )
    if not ok:
        raise RecipeError(f"{where}: field 'builder' must be {{'adapter': name, 'args': {{...}}}}, got {spec!r}")


def _build_dense(spec: dict[str, Any], where: str, trusted: Iterable[str], explicit: bool) -> nn.Module:
    """The dense model: a registered adapter, or a callable the caller trusts (never one the file names alone)."""
    args = spec.get("args", {})
    try:
        if "adapter" in spec:
            return plugins().adapter(spec["adapter"], **args).build()
        target = spec["callable"]
        if not explicit and target not in set(trusted):
            raise RecipeError(
                f"{where}: field 'builder' names the Python callable '{target}'; detprune rebuilds models from a file "
                f"only through registered model adapters. If you trust this file, load it with "
                f"detprune.load(path, trusted=['{target}']) or detprune.load(path, build=...)"
            )
        return _import(target)(**args)
    except RecipeError:
        raise
    except DetpruneError as exc:
        raise RecipeError(f"{where}: cannot rebuild the dense model from builder {spec}: {exc}") from exc


def _import(target: str) -> Any:
    mod, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise RecipeError(f"cannot import '{target}': {exc}") from exc
    return obj


def _leaves(names: list[str], model: nn.Module, where: str) -> tuple[Any, ...]:
    """Leaf names back to classes, by matching the model's own module classes (nothing is imported)."""
    classes = {f"{type(m).__module__}:{type(m).__qualname__}": type(m) for m in model.modules()}
    out = []
    for n in names:
        if ":" not in n:
            out.append(n)
        elif n in classes:
            out.append(classes[n])
        else:
            raise RecipeError(f"{where}: field 'leaves': '{n}' is not the class of any module of the rebuilt model")
    return tuple(out)


def replay(model: nn.Module, stages: list[dict[str, Any]], where: str, desc: str) -> nn.Module:
    """Trace ``model`` and apply each stage's plan in order, checking every stage's fingerprint first."""
    for i, stage in enumerate(stages):
        label = f"{where}: stages[{i}]" if len(stages) > 1 else where
        dtypes = stage.get("input_dtypes") or ["float32"] * len(stage["input_shapes"])
        gen = torch.Generator().manual_seed(0)
        try:
            inputs = tuple(
                torch.rand(s, generator=gen).to(getattr(torch, d)) for s, d in zip(stage["input_shapes"], dtypes)
            )
        except (TypeError, AttributeError, RuntimeError) as exc:
            raise RecipeError(f"{label}: fields 'input_shapes'/'input_dtypes' are not valid: {exc}") from exc
        try:
            graph = trace(
                model,
                inputs,
                protected=tuple(stage.get("protected") or ()),
                leaves=_leaves(stage.get("leaves") or [], model, label),
            )
        except GraphError as exc:
            raise RecipeError(f"{label}: cannot trace the model built by {desc}: {exc}") from exc
        if graph.fingerprint() != stage["fingerprint"]:
            raise RecipeError(
                f"{label}: the model built by {desc} does not have the structure the plan was made for "
                f"(fingerprint {graph.fingerprint()} != {stage['fingerprint']}); pass the builder that "
                f"made it: detprune.load(path, build=...)"
            )
        try:
            plan = PruningPlan.from_dict(stage["plan"])
            model = graph.apply(model, plan, inplace=True, check=False)
        except (GraphError, ValueError, TypeError, KeyError) as exc:
            raise RecipeError(f"{label}: field 'plan' does not fit the model: {exc}") from exc
    return model


def rebuild(
    recipe: dict[str, Any],
    state: dict[str, torch.Tensor] | None,
    where: str,
    build: Callable[[], nn.Module] | dict[str, Any] | None = None,
    trusted: Iterable[str] = (),
) -> nn.Module:
    """The pruned model of ``recipe`` with ``state`` loaded (None: keep the rebuilt initial weights)."""
    if callable(build) and not isinstance(build, dict):
        dense, desc = build(), "the given build()"
    else:
        spec = builder_spec(build) or recipe["builder"]
        dense, desc = _build_dense(spec, where, trusted, explicit=build is not None), f"builder {spec}"
    pruned = replay(dense, recipe["stages"], where, desc)
    if state is not None:
        load_weights_strict(pruned, state, where)
    setattr(pruned, ATTR, {k: recipe[k] for k in ("format", "builder", "stages")})
    return pruned.train(bool(recipe.get("training", False)))


def load_weights_strict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise RecipeError(f"{where}: the saved weights do not fit the pruned model: {detail[:300]}") from exc


def load(
    path: str | os.PathLike, build: Callable[[], nn.Module] | dict[str, Any] | None = None, trusted: Iterable[str] = ()
) -> nn.Module:
    """Rebuild the dense model, replay the saved plans and load the pruned weights.

    :param build: overrides the recipe's builder: a zero-argument callable returning the dense
        model, or a builder spec like the one ``detprune.prune(builder=...)`` takes (your code: trusted).
    :param trusted: ``"pkg.mod:fn"`` callables a recipe's builder may name; without it only
        registered model adapters rebuild a model from a file.
    """
    recipe, state = read_recipe(path)
    return rebuild(recipe, state, str(path), build=build, trusted=trusted)


def checkpoint_meta(model: nn.Module) -> dict[str, Any]:
    """What a training checkpoint records about a pruned architecture: its recipe (JSON text), so
    ``eval``/``train --resume`` rebuild it from the checkpoint alone."""
    chain = getattr(model, ATTR, None)
    return {"recipe": json.dumps(make_recipe(chain["builder"], chain["stages"]))} if chain else {}

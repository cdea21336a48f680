"""After surgery: run the example inputs through the pruned model once; on failure, find the group.

The bisection follows mmrazor's ``find_mutable`` idea: prune half of the plan's groups on a fresh
copy, keep the half that still fails, until one group is left, so the error names the group
(its producers) and the op where the forward broke instead of a shape mismatch deep inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from detprune.errors import GraphError
from detprune.graph.capture import evaluating
from detprune.graph.plan import PruningPlan


def run_forward(graph, model: nn.Module) -> str | None:
    """``None`` when the model runs and its outputs have the traced shapes, else what went wrong."""
    stack: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}

    def push(m: nn.Module, args: Any) -> None:
        stack.append(names.get(id(m), "?"))

    def pop(m: nn.Module, args: Any, out: Any) -> None:  # must return None: a value replaces the output
        if stack:
            stack.pop()

    pre = torch.nn.modules.module.register_module_forward_pre_hook(push)
    post = torch.nn.modules.module.register_module_forward_hook(pop)
    try:
        with evaluating(model), torch.no_grad():
            out = model(*graph.example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the pruned forward is reported
        where = f" in module '{stack[-1]}'" if stack and stack[-1] else ""
        return f"{type(exc).__name__}{where}: {exc}"
    finally:
        pre.remove()
        post.remove()
    flat, _ = tree_flatten(out)
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in flat]
    if shapes != list(graph.output_shapes):
        return f"output shapes changed from {graph.output_shapes} to {shapes}"
    return None


def _fails(graph, model: nn.Module, plan: PruningPlan, gids: list[int], apply: Callable[..., nn.Module]) -> str | None:
    sub = PruningPlan({g: plan.kept[g] for g in gids})
    return run_forward(graph, apply(graph, model, sub, check=False))


def _describe(graph, gid: int) -> str:
    g = graph.group(gid)
    prods = g.modules("out")
    shown = ", ".join(prods[:4]) + (f" and {len(prods) - 4} more" if len(prods) > 4 else "")
    return f"group {gid} (size {g.size}, producers {shown or 'none'})"


def check_or_explain(
    graph, original: nn.Module | None, pruned: nn.Module, plan: PruningPlan, apply: Callable[..., nn.Module]
) -> None:
    """Run the pruned model once; on failure, bisect the plan's groups (re-pruning ``original`` with
    ``apply``, the surgery) and name the first group that breaks the forward pass."""
    problem = run_forward(graph, pruned)
    if problem is None:
        return
    gids = sorted(plan.kept)
    if original is None or len(gids) == 1:
        raise GraphError(
            f"the pruned model fails on the example inputs: {problem}"
            + (f" (pruning {_describe(graph, gids[0])})" if len(gids) == 1 else "")
        )
    while len(gids) > 1:
        half = len(gids) // 2
        first, second = gids[:half], gids[half:]
        p1 = _fails(graph, original, plan, first, apply)
        if p1 is not None:
            gids, problem = first, p1
            continue
        p2 = _fails(graph, original, plan, second, apply)
        if p2 is not None:
            gids, problem = second, p2
            continue
        raise GraphError(
            f"the pruned model fails on the example inputs only when groups {gids} are pruned together: {problem}"
        )
    raise GraphError(f"pruning {_describe(graph, gids[0])} breaks the forward pass: {problem}")

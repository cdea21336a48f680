"""Run one forward pass and record how channels flow (the capture half of ``trace``).

We capture at run time with :class:`torch.overrides.TorchFunctionMode`: every torch function and
Tensor method the model calls is seen with its real tensors, so Python control flow in
``forward`` (shape-dependent branches in detection heads, loops over routes) simply executes.
Every tensor whose channels we can follow carries an *id array*: an int array with one axis per
tensor axis, of size 1 on axes that carry no channel information and of the tensor's size on the
channel axis; element ``e`` of the tensor belongs to channel id ``ids[broadcast(e)]``.
Producers (conv, linear) mint fresh ids; everything else moves, slices, concatenates or unions
them (``ops/`` modules). The result is a :class:`Capture`: raw ids, union pairs, constraints,
fixed ids and, per module, which ids each of its channel axes carries.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from detprune.errors import GraphError
from detprune.graph.records import (
    Capture,
    Constraint,
    ModRecord,
    ParamSlot,
    flat_tensors,
)
from detprune.graph.vocab import PRODUCERS, dispatch, op_name, param_lineage


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; each module's own ``training`` flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    if any(t for _, t in flags):
        for m, _ in flags:
            m.training = False
    try:
        yield model
    finally:
        for m, t in flags:
            m.training = t


def _leaf_matches(name: str, module: nn.Module, leaves: Sequence[Any]) -> bool:
    for leaf in leaves:
        if isinstance(leaf, str):
            if name == leaf or name.startswith(leaf + "."):
                return True
        elif isinstance(leaf, type) and isinstance(module, leaf):
            return True
    return False


class Recorder(TorchFunctionMode):
    """The TorchFunctionMode that observes a forward pass; handlers live in ``ops_*``."""

    def __init__(self, model: nn.Module, leaves: Sequence[Any] = ()):
        super().__init__()
        self.names: dict[int, str] = {}
        self.owner: dict[int, tuple[str, str]] = {}
        for mname, m in model.named_modules(remove_duplicate=False):
            self.names.setdefault(id(m), mname)
            for pname, p in list(m._parameters.items()) + list(m._buffers.items()):
                if p is not None and id(p) not in self.owner:
                    self.owner[id(p)] = (mname, pname)
        self.leaves = tuple(leaves)
        self.info: dict[int, np.ndarray] = {}
        self.lineage: dict[int, tuple[str, str, int]] = {}
        # info/lineage are keyed by id(tensor); an entry is dropped when its tensor is freed, so a
        # recycled id can never inherit channels, and activations are not kept alive by the capture
        self._watched: set[int] = set()
        self.next_id = 0
        self.sources: list[tuple[int, int, str]] = []
        self.edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.fixed: list[tuple[np.ndarray, str]] = []
        self.constraints: list[Constraint] = []
        self.records: dict[str, ModRecord] = {}
        self.param_slots: dict[tuple[str, str, int], ParamSlot] = {}
        self.stack: list[str] = []
        self.leaf_depth = 0
        self._order = 0

    # ---- the mode -----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth:
            return out
        tensors = flat_tensors(args, kwargs)
        if not tensors:
            return out
        info = self.info
        if not any(id(t) in info for t in tensors):
            if any(id(t) in self.owner or id(t) in self.lineage for t in tensors):
                if op_name(func) in PRODUCERS:  # a conv on a tensor made inside forward
                    dispatch(self, func, args, kwargs, out)
                else:
                    param_lineage(self, func, args, kwargs, out)
            return out
        dispatch(self, func, args, kwargs, out)
        return out

    # ---- helpers for handlers -----------------------------------------------------------
    def ids(self, t: Any) -> np.ndarray | None:
        return self.info.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: torch.Tensor, ids: np.ndarray | None) -> None:
        if ids is None or not isinstance(t, torch.Tensor):
            return
        if ids.ndim != t.dim():  # an engine bug: say where, so a leaf can route around it
            raise self.error("?", f"internal: id array of rank {ids.ndim} for a tensor of rank {t.dim()}")
        self.watch(t)
        self.info[id(t)] = ids

    def watch(self, t: torch.Tensor) -> None:
        key = id(t)
        if key not in self._watched:
            self._watched.add(key)
            weakref.finalize(t, self._forget, key)

    def _forget(self, key: int) -> None:
        self._watched.discard(key)
        self.info.pop(key, None)
        self.lineage.pop(key, None)

    def mint(self, n: int, source: str, fixed: str | None = None) -> np.ndarray:
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.sources.append((self.next_id, self.next_id + n, source))
        self.next_id += n
        if fixed:
            self.fixed.append((ids, fixed))
        return ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.broadcast_arrays(a, b)
        a, b = a.ravel(), b.ravel()
        diff = a != b
        if diff.any():
            self.edges.append((a[diff].copy(), b[diff].copy()))

    def fix(self, ids: np.ndarray, reason: str) -> None:
        if ids.size:
            self.fixed.append((np.unique(ids), reason))

    def constrain(self, blocks: list[np.ndarray], what: str) -> None:
        self.constraints.append(Constraint([np.asarray(b).ravel() for b in blocks], f"{what} in {self.where()}"))

    def where(self) -> str:
        return f"module '{self.stack[-1]}'" if self.stack and self.stack[-1] else "the model's forward"

    def path(self) -> str:
        return self.stack[-1] if self.stack else ""

    def error(self, op: str, detail: str) -> GraphError:
        path = self.path()
        hint = (
            f" Mark that module as a leaf to keep its channels: trace(..., leaves=('{path}',))."
            if path
            else " Wrap the code in a module and mark it as a leaf: trace(..., leaves=(...))."
        )
        return GraphError(f"cannot follow channels through '{op}' in {self.where()}: {detail}.{hint}")

    def record(self, name: str, kind: str) -> tuple[ModRecord, bool]:
        rec = self.records.get(name)
        if rec is None:
            rec = ModRecord(name=name, kind=kind, order=self._order)
            self._order += 1
            self.records[name] = rec
            return rec, True
        if rec.kind != kind:
            raise self.error(kind, f"module '{name}' is used both as {rec.kind} and as {kind}")
        return rec, False

    def merge_axis(self, rec: ModRecord, role: str, ids: np.ndarray) -> np.ndarray:
        """Store ``ids`` as the module's ``role`` axis; a second call unions with the first."""
        old = getattr(rec, role)
        if old is None:
            setattr(rec, role, ids)
            return ids
        if old.shape != ids.shape:
            raise self.error(rec.kind, f"module '{rec.name}' is called twice with {old.size} and {ids.size} channels")
        self.union(old, ids)
        return old

    # ---- module hooks -------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args: Any) -> None:
        name = self.names.get(id(module), type(module).__name__)
        self.stack.append(name)
        if self.leaf_depth:
            self.leaf_depth += 1
            return
        if isinstance(module, torch.jit.ScriptModule) or (self.leaves and _leaf_matches(name, module, self.leaves)):
            # scripted code runs below torch functions: it is a leaf whether marked or not
            for t in tree_flatten(args)[0]:  # dicts of feature maps too (FPN outputs)
                ids = self.ids(t)
                if ids is not None:
                    self.fix(ids, f"input of leaf module '{name}'")
            self.leaf_depth = 1

    def post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()
        if self.leaf_depth:
            self.leaf_depth -= 1  # leaf outputs stay untracked: their channels are fixed


def run_capture(model: nn.Module, inputs: tuple[Any, ...], leaves: Sequence[Any] = ()) -> Capture:
    """One eval-mode, no-grad forward of ``model(*inputs)`` under a :class:`Recorder`."""
    rec = Recorder(model, leaves)
    for lf in rec.leaves:
        if isinstance(lf, str) and lf not in {n for n in rec.names.values()}:
            raise GraphError(f"leaf module '{lf}' is not in the model (leaves={rec.leaves!r})")
    for t in flat_tensors(inputs, {}):
        if t.dim() >= 2:  # the model's input channels are fixed; minted so ops can follow them
            ids = rec.mint(t.shape[1], "model input", fixed="model input channels")
            rec.set(t, ids.reshape([1, -1] + [1] * (t.dim() - 2)))
    h1 = torch.nn.modules.module.register_module_forward_pre_hook(rec.pre_hook)
    h2 = torch.nn.modules.module.register_module_forward_hook(rec.post_hook)
    try:
        with evaluating(model), torch.no_grad(), rec:
            out = model(*inputs)
    finally:
        h1.remove()
        h2.remove()
    flat, spec = tree_flatten(out)
    shapes: list[tuple[int, ...] | None] = []
    for k, t in enumerate(flat):
        shapes.append(tuple(t.shape) if isinstance(t, torch.Tensor) else None)
        ids = rec.ids(t)
        if ids is not None:
            rec.fix(ids, f"reaches model output {k}")
    return Capture(
        n_ids=rec.next_id,
        sources=rec.sources,
        edges=rec.edges,
        fixed=rec.fixed,
        constraints=rec.constraints,
        records=rec.records,
        param_slots=rec.param_slots,
        output_spec=spec,
        output_shapes=shapes,
    )

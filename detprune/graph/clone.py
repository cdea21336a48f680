"""A faster ``copy.deepcopy`` for module trees (the copy ``graph.apply`` prunes into).

``copy.deepcopy`` walks every module through the generic ``__reduce_ex__`` path; most of a
module's ``__dict__`` is plain numbers, strings and empty hook dicts. This clone copies those
directly, clones parameters and buffers (or takes the replacement tensors given in ``memo``,
keyed by ``id`` of the original), and falls back to ``copy.deepcopy`` for any other attribute
and for modules that customise copying or pickling.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

_ATOMIC = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device)


def _is_atomic(v: Any) -> bool:
    if isinstance(v, _ATOMIC):
        return True
    return isinstance(v, tuple) and all(isinstance(x, _ATOMIC) for x in v)


def _tensor(t: torch.Tensor | None, memo: dict[int, Any]) -> Any:
    if t is None:
        return None
    got = memo.get(id(t))
    if got is None:
        if isinstance(t, nn.Parameter):
            got = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
        else:
            got = t.detach().clone() if not t.requires_grad else copy.deepcopy(t, memo)
        memo[id(t)] = got
    return got


def _torch_own(fn: Any) -> bool:
    """torch.nn's own (un)pickling hooks only fill in attributes of old checkpoints: safe to skip."""
    return getattr(fn, "__module__", "").startswith("torch.nn.modules")


def _plain(m: nn.Module) -> bool:
    cls = type(m)
    return (
        getattr(cls, "__deepcopy__", None) is None
        and cls.__reduce_ex__ is object.__reduce_ex__
        and _torch_own(cls.__getstate__)
        and _torch_own(cls.__setstate__)
    )


def clone(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of ``module``; ``memo`` may map ``id(original tensor)`` to its replacement."""
    memo = {} if memo is None else memo
    if id(module) in memo:
        return memo[id(module)]
    if not _plain(module):
        return copy.deepcopy(module, memo)
    new = object.__new__(type(module))
    memo[id(module)] = new
    d: dict[str, Any] = {}
    for k, v in module.__dict__.items():
        if k == "_parameters" or k == "_buffers":
            d[k] = type(v)((n, _tensor(t, memo)) for n, t in v.items())
        elif k == "_modules":
            d[k] = type(v)((n, None if c is None else clone(c, memo)) for n, c in v.items())
        elif _is_atomic(v):
            d[k] = v
        elif isinstance(v, (dict, OrderedDict, set)) and not v:
            d[k] = type(v)()
        else:
            d[k] = copy.deepcopy(v, memo)
    new.__dict__.update(d)
    return new

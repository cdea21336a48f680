"""Greedy slimming (AutoSlim §3.2; JiahuiYu ``slimming()``, mmrazor ``AutoSlimGreedySearchLoop``;
research/algorithms.md §5.3)::

    subnet = widest; for target in budgets, largest first:
        while flops(subnet) > target:
            for each unit above its narrowest level: score subnet with that unit one bin narrower
            subnet = the best-scoring candidate;  checkpoint(subnet)
        record subnet for target

The search is resumable: after every step its state (the current widths, the configurations found
so far, the history) is written to a JSON file atomically (temp file, fsync, rename). A search
started again on that file continues where it stopped and, since every candidate is scored from
scratch on fixed batches, ends with the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from detprune.errors import DetpruneError
from detprune_plugins.autoslim.flops import FlopModel
from detprune_plugins.autoslim.slimmable import Config, Slimmable

log = logging.getLogger("detprune.autoslim")

FORMAT = "detprune-autoslim-search/1"


class SearchStateError(DetpruneError):
    """A search state file is unreadable or belongs to another search."""


def greedy_slimming(
    slim: Slimmable,
    flops: FlopModel,
    score: Callable[[Config], tuple[float, ...]],
    targets: Sequence[float],
    *,
    state_path: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    fingerprint: str = "",
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the search; returns its state (``found``: one entry per target, ``done``).

    ``targets`` are fractions of the dense FLOPs. ``max_steps`` stops after that many greedy steps
    of this call (``done`` stays False) so a long search can be run in pieces.
    """
    targets = sorted({float(t) for t in targets}, reverse=True)
    for t in targets:
        if not 0.0 < t <= 1.0:
            raise DetpruneError(f"autoslim: FLOPs budgets are fractions of the dense model in (0, 1], got {t}")
    settings = dict(settings or {})
    settings["targets"] = targets
    path = Path(state_path) if state_path is not None else None
    state = _load(path, fingerprint, settings) if path is not None and path.exists() else None
    if state is None:
        state = {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "settings": settings,
            "dense_flops": flops.dense,
            "config": _dump(slim.max_config()),
            "found": [],
            "history": [],
            "done": False,
        }
    elif state["done"]:
        return state
    config = _parse(state["config"])
    dense = flops.dense
    fraction = lambda c: flops(slim.keep_raw(c)) / dense  # noqa: E731
    done_targets = {f["target"] for f in state["found"]}
    steps = 0
    bar = tqdm(
        total=round((1 - targets[-1]) * 1000),
        desc="autoslim greedy",
        unit="‰FLOPs",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    bar.update(round((1 - fraction(config)) * 1000))
    try:
        for target in targets:
            if target in done_targets:
                continue
            while fraction(config) > target + 1e-12:
                units = [u for u in slim.units if config[u] > 1]
                if not units:
                    log.warning(
                        "autoslim: the narrowest widths keep %.3f of the FLOPs, above the budget %.3f",
                        fraction(config),
                        target,
                    )
                    break
                if max_steps is not None and steps >= max_steps:
                    return state
                before = fraction(config)
                best: tuple[tuple[float, ...], int, Config] | None = None
                for u in units:  # ties keep the first unit: deterministic
                    cand = dict(config)
                    cand[u] -= 1
                    s = tuple(score(cand))
                    if best is None or s > best[0]:
                        best = (s, u, cand)
                assert best is not None
                config = best[2]
                after = fraction(config)
                state["config"] = _dump(config)
                state["history"].append(
                    {"unit": best[1], "level": config[best[1]], "flops": after, "score": list(best[0])}
                )
                _save(path, state)
                steps += 1
                bar.update(round((1 - after) * 1000) - round((1 - before) * 1000))
                bar.set_postfix(flops=f"{after:.3f}", score=f"{best[0][0]:.4g}", refresh=False)
            last = state["history"][-1]["score"] if state["history"] else None
            state["found"].append({"target": target, "config": _dump(config), "flops": fraction(config), "score": last})
            _save(path, state)
        state["done"] = True
        _save(path, state)
        return state
    finally:
        bar.close()


def found_config(state: Mapping[str, Any], target: float | None = None) -> Config:
    """The configuration found for ``target`` (default: the smallest budget)."""
    found = state["found"]
    if not found:
        raise DetpruneError("autoslim: the search found no configuration yet")
    if target is None:
        return _parse(min(found, key=lambda f: f["target"])["config"])
    for f in found:
        if abs(f["target"] - float(target)) < 1e-9:
            return _parse(f["config"])
    raise DetpruneError(f"autoslim: no configuration for budget {target}; found {[f['target'] for f in found]}")


def _dump(config: Mapping[int, int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(config.items())}


def _parse(config: Mapping[str, int]) -> Config:
    return {int(k): int(v) for k, v in config.items()}


def _load(path: Path, fingerprint: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SearchStateError(
            f"{path}: cannot read the autoslim search state ({exc}); delete it to start over"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SearchStateError(
            f"{path}: field 'format' is {state.get('format') if isinstance(state, dict) else None!r}, "
            f"expected {FORMAT!r}: not an autoslim search state"
        )
    if state.get("fingerprint") != fingerprint:
        raise SearchStateError(
            f"{path}: field 'fingerprint' is {state.get('fingerprint')!r} but this model's graph is "
            f"{fingerprint!r}: the state belongs to another model; delete it to start over"
        )
    stored = state.get("settings", {})
    for key in sorted(set(stored) | set(settings)):
        if json.loads(json.dumps(stored.get(key))) != json.loads(json.dumps(settings.get(key))):
            raise SearchStateError(
                f"{path}: field 'settings.{key}' is {stored.get(key)!r} but this search asks for "
                f"{settings.get(key)!r}; use the same settings to resume, or another state file"
            )
    return state


def _save(path: Path | None, state: Mapping[str, Any]) -> None:
    """Write the state atomically: a crash leaves the previous file or the new one, never half of one."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

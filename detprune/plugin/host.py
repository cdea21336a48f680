"""The plugin host: one pluggy PluginManager, one registry per plugin kind.

Plugins come from the ``detprune`` entry-point group, built-ins included. Loading is forgiving
by design: a plugin that fails to import, or raises in a hook, is recorded as broken and the
others still load; the error surfaces when someone asks for a name it might have provided, and
in ``detprune plugins``. Setting ``DETPRUNE_PLUGINS=dist-a,dist-b`` restricts third-party loading
to those distributions (detprune's own built-ins always load); ``DETPRUNE_PLUGINS=`` loads none.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from detprune.errors import (
    BrokenPluginError,
    PluginConflictError,
    PluginError,
    UnknownPluginError,
)
from detprune.plugin import hookspecs
from detprune.plugin.protocols import conform, missing_methods

GROUP = "detprune"
ENV_VAR = "DETPRUNE_PLUGINS"
SELF_DIST = "detprune"

# kind -> (hook name, singular label, plural label)
KINDS: dict[str, tuple[str, str, str]] = {
    "criterion": ("detprune_criteria", "criterion", "criteria"),
    "pruner": ("detprune_pruners", "pruner", "pruners"),
    "compensator": ("detprune_compensators", "compensator", "compensators"),
    "adapter": ("detprune_model_adapters", "model adapter", "model adapters"),
}


@dataclass(frozen=True)
class PluginInfo:
    """One registered (or failed) plugin: an entry point and the distribution that ships it."""

    name: str
    dist: str
    version: str
    target: str  # "module" or "module:attr" the entry point names

    def label(self) -> str:
        return f"'{self.name}' (distribution '{self.dist} {self.version}')"


@dataclass(frozen=True)
class Broken:
    """A plugin that failed: at import time (``stage='import'``) or inside a hook."""

    plugin: PluginInfo
    stage: str
    error: str
    kind: str | None = None  # the kind whose hook raised; None when the import failed

    def describe(self) -> str:
        where = "failed to import" if self.stage == "import" else f"raised in {self.stage}"
        return f"plugin {self.plugin.label()} {where}: {self.error}"


@dataclass(frozen=True)
class Entry:
    """A name of one kind, offered by one plugin, with the factory that makes it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: PluginInfo

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def as_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin.name,
            "distribution": self.plugin.dist,
            "version": self.plugin.version,
            "description": self.description,
        }


@dataclass
class PluginHost:
    """Registries of criteria, pruners, compensators and model adapters.

    Build one with :func:`plugins` (cached, loads entry points) or directly with an explicit list
    of entry points (tests). :meth:`register` adds an in-process plugin, handy in notebooks.
    """

    pm: pluggy.PluginManager = field(default_factory=lambda: _new_manager())
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    broken: list[Broken] = field(default_factory=list)
    registry: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    conflicts: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)

    # ---- loading -------------------------------------------------------------------------
    def load_entry_points(self, eps: Iterable[metadata.EntryPoint]) -> None:
        """Import and register each entry point; record failures instead of raising."""
        for ep in sorted(eps, key=lambda e: (_dist_of(e)[0], e.name)):
            dist, version = _dist_of(ep)
            info = PluginInfo(ep.name, dist, version, ep.value)
            try:
                obj = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything on import
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                self.broken.append(Broken(info, "import", _fmt(exc)))
                continue
            self._register(obj, info)
        self.rebuild()

    def register(self, obj: Any, name: str, dist: str = "<in-process>", version: str = "") -> None:
        """Register a plugin object (module or instance with hookimpls) without packaging it."""
        self._register(obj, PluginInfo(name, dist, version, repr(obj)))
        self.rebuild()

    def _register(self, obj: Any, info: PluginInfo) -> None:
        try:
            self.pm.register(obj, name=info.name)
        except ValueError as exc:  # same name or same object registered twice
            self.broken.append(Broken(info, "import", f"cannot register: {exc}"))
            return
        self.infos[info.name] = info

    def rebuild(self) -> None:
        """(Re)collect every kind's names from the registered plugins' hooks."""
        self.registry = {k: {} for k in KINDS}
        self.conflicts = {}
        self.broken = [b for b in self.broken if b.stage == "import"]
        for kind, (hook_name, _, _) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():  # registration order
                info = self.infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, "?", "", "?")
                try:
                    offered = impl.function()
                    if offered is None:
                        continue
                    items = list(dict(offered).items())
                    for name, factory in items:
                        if not isinstance(name, str) or not callable(factory):
                            raise TypeError(f"{hook_name}() must map str names to factories, got {name!r}: {factory!r}")
                except Exception as exc:  # noqa: BLE001 - isolate a faulty plugin
                    self.broken.append(Broken(info, f"{hook_name}()", _fmt(exc), kind))
                    continue
                for name, factory in items:
                    missing = missing_methods(kind, factory) if isinstance(factory, type) else []
                    if missing:  # checked at load: an author learns it from `detprune plugins`, not mid-run
                        where = f"{factory.__module__}.{factory.__qualname__}"
                        self.broken.append(
                            Broken(
                                info,
                                f"{hook_name}()",
                                f"{KINDS[kind][1]} '{name}' ({where}) does "
                                f"not define {', '.join(repr(m) for m in missing)}",
                                kind,
                            )
                        )
                        continue
                    self._add(Entry(kind, name, factory, info))

    def _add(self, entry: Entry) -> None:
        key = (entry.kind, entry.name)
        if key in self.conflicts:
            self.conflicts[key].append(entry)
            return
        existing = self.registry[entry.kind].get(entry.name)
        if existing is None:
            self.registry[entry.kind][entry.name] = entry
        else:
            del self.registry[entry.kind][entry.name]
            self.conflicts[key] = [existing, entry]

    # ---- lookup --------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` of ``kind``, or an error that explains what went wrong."""
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds are: {', '.join(KINDS)}")
        _, singular, plural = KINDS[kind]
        if (kind, name) in self.conflicts:
            who = " and ".join(e.plugin.label() for e in self.conflicts[(kind, name)])
            raise PluginConflictError(
                f"{singular} '{name}' is offered by more than one plugin: {who}. "
                f"Uninstall one of them, or set {ENV_VAR} to the distributions that should load."
            )
        entry = self.registry[kind].get(name)
        if entry is not None:
            return entry
        known = sorted(self.registry[kind]) + sorted(n for k, n in self.conflicts if k == kind)
        msg = f"unknown {singular} '{name}'."
        lowered = {k.lower(): k for k in known}
        close = (
            [lowered[name.lower()]]
            if name.lower() in lowered
            else difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        )
        if close:
            msg += f" Did you mean '{close[0]}'?"
        msg += f" Known {plural}: {', '.join(known) if known else '(none)'}."
        suspects = [b for b in self.broken if b.kind in (None, kind)]
        if suspects:
            msg += " These plugins failed and may have provided it: " + "; ".join(b.describe() for b in suspects)
            raise BrokenPluginError(msg)
        raise UnknownPluginError(msg)

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Instantiate ``name`` of ``kind`` with ``options``; the object offers the kind's whole lifecycle
        (:func:`detprune.plugin.protocols.conform` supplies the no-ops a duck-typed plugin leaves out)."""
        entry = self.get(kind, name)
        try:
            obj = entry.factory(**options)
        except TypeError as exc:
            raise PluginError(
                f"{KINDS[kind][1]} '{name}' from {entry.plugin.label()} rejected its options {options}: {exc}"
            ) from exc
        missing = missing_methods(kind, obj)
        if missing:
            raise PluginError(
                f"{KINDS[kind][1]} '{name}' from {entry.plugin.label()} made an object without "
                f"{', '.join(repr(m) for m in missing)}"
            )
        return conform(kind, obj)

    def criterion(self, name: str, **options: Any) -> Any:
        return self.create("criterion", name, **options)

    def pruner(self, name: str, **options: Any) -> Any:
        return self.create("pruner", name, **options)

    def compensator(self, name: str, **options: Any) -> Any:
        return self.create("compensator", name, **options)

    def adapter(self, name: str, **args: Any) -> Any:
        return self.create("adapter", name, **args)

    def names(self, kind: str) -> list[str]:
        return sorted(self.registry[kind])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind else list(KINDS)
        return [self.registry[k][n] for k in kinds for n in sorted(self.registry[k])]

    def report(self, result: Any) -> None:
        """Call every ``detprune_report`` observer; an observer's error is a warning only."""
        import warnings

        for impl in self.pm.hook.detprune_report.get_hookimpls():
            try:
                impl.function(result=result)
            except Exception as exc:  # noqa: BLE001
                warnings.warn(f"report hook of plugin '{impl.plugin_name}' raised: {_fmt(exc)}", stacklevel=2)


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    return pm


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("?", "")
    return (dist.metadata["Name"] or "?", dist.version or "")


def _fmt(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def selected_entry_points(env: str | None = None) -> list[metadata.EntryPoint]:
    """Entry points of the ``detprune`` group, filtered by ``DETPRUNE_PLUGINS`` when it is set."""
    eps = list(metadata.entry_points(group=GROUP))
    env = os.environ.get(ENV_VAR) if env is None else env
    if env is None:
        return _dedupe(eps)
    wanted = {n.strip().lower().replace("_", "-") for n in env.split(",") if n.strip()}
    wanted.add(SELF_DIST)
    return _dedupe([ep for ep in eps if _dist_of(ep)[0].lower().replace("_", "-") in wanted])


def _dedupe(eps: list[metadata.EntryPoint]) -> list[metadata.EntryPoint]:
    """The same distribution can be visible twice on sys.path (editable + build dir)."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for ep in eps:
        key = (_dist_of(ep)[0], ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            out.append(ep)
    return out


_HOST: PluginHost | None = None


def plugins(reload: bool = False) -> PluginHost:
    """The process-wide host, built on first use from the installed entry points."""
    global _HOST
    if _HOST is None or reload:
        host = PluginHost()
        host.load_entry_points(selected_entry_points())
        _HOST = host
    return _HOST

"""``detprune plugins``: what is installed, who ships it, and what failed to load."""

from __future__ import annotations

import argparse
import difflib
import inspect
import json

from detprune.errors import DetpruneError
from detprune.plugin.describe import options
from detprune.plugin.host import KINDS, plugins


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list installed plugins (criteria, pruners, compensators, model adapters)",
        description="List every installed plugin name by kind, with the distribution that provides "
        "it, its version and a one-line description. Plugins that failed to load are listed with "
        "their error; names offered twice are listed as conflicts.",
    )
    p.add_argument(
        "name",
        nargs="?",
        help="show one plugin: its description, where it comes from and every option "
        "it takes, with the `detprune prune` flag that sets it",
    )
    p.add_argument("--kind", choices=list(KINDS), help="show only this kind")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        return show(args.name, args.kind, args.json)
    host = plugins()
    entries = host.entries(args.kind)
    broken = [b for b in host.broken if args.kind is None or b.kind in (None, args.kind)]
    conflicts = [
        {"kind": k, "name": n, "plugins": [e.as_dict() for e in es]}
        for (k, n), es in sorted(host.conflicts.items())
        if args.kind is None or k == args.kind
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "plugins": [e.as_dict() for e in entries],
                    "broken": [
                        {
                            "plugin": b.plugin.name,
                            "distribution": b.plugin.dist,
                            "version": b.plugin.version,
                            "stage": b.stage,
                            "kind": b.kind,
                            "error": b.error,
                        }
                        for b in broken
                    ],
                    "conflicts": conflicts,
                },
                indent=2,
            )
        )
        return 0
    rows = [(e.kind, e.name, f"{e.plugin.dist} {e.plugin.version}".strip(), e.description) for e in entries]
    if rows:
        widths = [max(len(r[i]) for r in rows + [("kind", "name", "distribution", "")]) for i in range(3)]
        print(f"{'kind':<{widths[0]}}  {'name':<{widths[1]}}  {'distribution':<{widths[2]}}  description")
        for r in rows:
            print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    else:
        print("no plugins found" + (f" of kind {args.kind}" if args.kind else ""))
    for c in conflicts:
        who = ", ".join(f"{p['distribution']} {p['version']}" for p in c["plugins"])
        print(f"CONFLICT  {c['kind']} '{c['name']}' is offered by: {who}")
    for b in broken:
        print(f"BROKEN    {b.describe()}")
    return 0


def show(name: str, kind: str | None, as_json: bool) -> int:
    """One plugin name (of every kind that has it, or of ``kind``): docstring, origin, options."""
    host = plugins()
    kinds = [kind] if kind else [k for k in KINDS if name in host.registry[k]]
    if not kinds:
        every = sorted({n for k in KINDS for n in host.registry[k]})
        close = difflib.get_close_matches(name, every, n=1, cutoff=0.6)
        raise DetpruneError(
            f"no plugin is named '{name}'.{f' Did you mean {close[0]!r}?' if close else ''} "
            f"`detprune plugins` lists them all"
        )
    found = [host.get(k, name) for k in kinds]
    described = [
        {
            **e.as_dict(),
            "doc": inspect.getdoc(e.factory) or "",
            "options": [
                {
                    "name": o.name,
                    "default": None if o.default is inspect.Parameter.empty else o.default,
                    "required": o.default is inspect.Parameter.empty,
                    "flag": o.flag,
                    "doc": o.doc,
                }
                for o in options(e.kind, e.factory)
            ],
        }
        for e in found
    ]
    if as_json:
        print(json.dumps(described, indent=2, default=repr))
        return 0
    for d, e in zip(described, found):
        print(f"{d['kind']} '{d['name']}' from {e.plugin.label()} ({e.factory.__module__}.{e.factory.__qualname__})")
        print("\n".join("  " + line for line in d["doc"].splitlines()) or "  (no description)")
        print("options:" if d["options"] else "options: none")
        for o in options(e.kind, e.factory):
            print(f"  {o.describe()}")
        print()
    return 0

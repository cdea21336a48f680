"""``detprune plugins``: what is installed, who ships it, and what failed to load."""
from __future__ import annotations

import argparse
import json

from detprune.plugin.host import KINDS, plugins


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list installed plugins (criteria, pruners, compensators, model adapters)",
        description="List every installed plugin name by kind, with the distribution that provides "
        "it, its version and a one-line description. Plugins that failed to load are listed with "
        "their error; names offered twice are listed as conflicts.",
    )
    p.add_argument("--kind", choices=list(KINDS), help="show only this kind")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    host = plugins()
    entries = host.entries(args.kind)
    broken = [b for b in host.broken if args.kind is None or b.kind in (None, args.kind)]
    conflicts = [
        {"kind": k, "name": n, "plugins": [e.as_dict() for e in es]}
        for (k, n), es in sorted(host.conflicts.items())
        if args.kind is None or k == args.kind
    ]
    if args.json:
        print(json.dumps({
            "plugins": [e.as_dict() for e in entries],
            "broken": [
                {"plugin": b.plugin.name, "distribution": b.plugin.dist, "version": b.plugin.version,
                 "stage": b.stage, "kind": b.kind, "error": b.error}
                for b in broken
            ],
            "conflicts": conflicts,
        }, indent=2))
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

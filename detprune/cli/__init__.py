"""The ``detprune`` console script.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``;
modules are discovered here, so adding a command never touches a shared list. Errors that a user
can cause (:class:`detprune.errors.DetpruneError`) print as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from detprune import __version__
from detprune.errors import DetpruneError

DESCRIPTION = """\
detprune prunes convolutional detectors and classifiers structurally: whole filters and
channels come out, a physically smaller and faster model comes back, and mAP@0.5 (or top-1)
proves what it cost. Methods, criteria, compensators and model families are plugins.
"""

EPILOG = """\
examples:
  detprune plugins                       list installed criteria, pruners, compensators, adapters
  detprune plugins --kind criterion --json
  detprune <command> --help              options of one command

environment:
  DETPRUNE_PLUGINS=dist-a,dist-b         load only these third-party plugin distributions
"""


class UsageError(DetpruneError):
    """A bad command line: printed as one line (with the command's name), exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line naming the command and flag, not a usage block."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="detprune",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"detprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for mod in _command_modules():
        mod.register(sub)
    return parser


def _command_modules() -> list:
    import detprune.cli as pkg

    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        if hasattr(mod, "register"):
            mods.append(mod)
    return mods


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DetpruneError as exc:
        print(f"detprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("detprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

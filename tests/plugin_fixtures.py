"""Build throw-away plugin distributions on disk (dist-info + module) for host tests."""

from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path


def make_dist(root: Path, dist: str, version: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Write ``module.py`` and ``<dist>-<version>.dist-info`` declaring one detprune entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[detprune]\n{ep_name or dist} = {module}\n")


def entry_points(root: Path) -> list[metadata.EntryPoint]:
    """The detprune entry points of the distributions under ``root`` (with .dist set)."""
    eps = []
    for d in metadata.distributions(path=[str(root)]):
        eps.extend(ep for ep in d.entry_points if ep.group == "detprune")
    return eps

"""pyproject.toml names every package folder, and the built-ins ship as detprune_plugins."""

from __future__ import annotations

import tomllib

from conftest import REPO


def _config():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    cfg = _config()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for root, import_root in (("detprune", "detprune"), ("plugins", "detprune_plugins")):
        for init in (REPO / root).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / root).parts
            found.add(".".join((import_root, *rel)))
    assert found == listed
    assert cfg["package-dir"] == {"detprune_plugins": "plugins"}


def test_builtin_entry_points_point_at_detprune_plugins():
    eps = _config()["project"].get("entry-points", {}).get("detprune", {})
    for name, target in eps.items():
        assert target.startswith("detprune_plugins."), (name, target)


def test_runtime_dependencies_use_headless_opencv():
    deps = " ".join(_config()["project"]["dependencies"])
    assert "opencv-python-headless" in deps
    assert "opencv-python>" not in deps and "opencv-python " not in deps

"""The example third-party plugin installs with pip and shows up through the entry-point group."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO

EXAMPLE = REPO / "examples" / "third_party_plugin"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


@pytest.fixture()
def installed_example():
    done = _pip("install", "--no-deps", "--no-build-isolation", "--quiet", str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    try:
        yield
    finally:
        gone = _pip("uninstall", "--yes", "--quiet", "detprune-example-plugin")
        assert gone.returncode == 0, gone.stderr


def test_example_plugin_is_listed_and_usable(installed_example):
    listing = subprocess.run(
        [sys.executable, "-m", "detprune.cli", "plugins", "--json"], capture_output=True, text=True, check=True
    )
    out = json.loads(listing.stdout)
    mine = {(p["kind"], p["name"]): p for p in out["plugins"] if p["distribution"] == "detprune-example-plugin"}
    assert set(mine) == {("criterion", "mean-abs"), ("adapter", "tiny-cnn")}
    assert mine[("criterion", "mean-abs")]["version"] == "0.1.0"
    assert mine[("adapter", "tiny-cnn")]["description"].startswith("A three-layer CNN classifier")
    assert out["broken"] == []

    # callable through the host, in a fresh process that sees the new distribution
    code = (
        "import detprune, torch\n"
        "h = detprune.plugins()\n"
        "a = h.adapter('tiny-cnn', num_classes=4)\n"
        "m = a.build()\n"
        "print(tuple(m(*a.example_inputs(2)).shape))\n"
        "c = h.criterion('mean-abs')\n"
        "print(callable(c.score))\n"
        "from detprune.graph import trace\n"  # the criterion scores a real traced group of its model
        "grp = trace(m, a.example_inputs(2), protected=tuple(a.protected(m))).prunable_groups()[0]\n"
        "s = c.score(m, grp, None)\n"
        "w = m.get_submodule(grp.producers[0].module).weight.detach()\n"
        "print(tuple(s.shape) == (grp.size,), torch.allclose(s, w.abs().flatten(1).mean(1)))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["(2,", "4)", "True", "True", "True"]


def test_example_plugin_is_gone_after_uninstall():
    listing = subprocess.run(
        [sys.executable, "-m", "detprune.cli", "plugins", "--json"], capture_output=True, text=True, check=True
    )
    names = {p["distribution"] for p in json.loads(listing.stdout)["plugins"]}
    assert "detprune-example-plugin" not in names

"""The example third-party plugin installs with pip and shows up through the entry-point group.

It is installed into a temporary folder (``pip install --target``) that only the child processes of
these tests see on ``PYTHONPATH``: the live environment is never changed, and the tests do not
depend on their order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

EXAMPLE = REPO / "examples" / "third_party_plugin"


@pytest.fixture(scope="module")
def example_env(tmp_path_factory):
    """Environment variables under which a child process sees the example plugin installed."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def _plugins_json(env=None) -> dict:
    listing = subprocess.run(
        [sys.executable, "-m", "detprune.cli", "plugins", "--json"], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(listing.stdout)


def test_example_plugin_is_listed_and_usable(example_env):
    out = _plugins_json(example_env)
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
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=example_env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["(2,", "4)", "True", "True", "True"]


def test_the_live_environment_does_not_see_it(example_env):
    names = {p["distribution"] for p in _plugins_json()["plugins"]}
    assert "detprune-example-plugin" not in names

"""The plugin host: loading, conflicts, broken plugins, unknown names (issue: foundation)."""

from __future__ import annotations

import json

import pytest

from detprune.errors import BrokenPluginError, PluginConflictError, UnknownPluginError
from detprune.plugin import host as host_mod
from detprune.plugin.host import PluginHost
from plugin_fixtures import entry_points, make_dist

CRIT_A = '''
import detprune

class L1:
    """Sum of absolute weights."""
    def score(self, model, group, ctx):
        return None

class L2:
    """Euclidean norm."""
    def score(self, model, group, ctx):
        return None

@detprune.hookimpl
def detprune_criteria():
    return {"l1": L1, "l2": L2}
'''

CRIT_B_SAME_NAME = '''
import detprune

class OtherL1:
    """Another L1."""
    def score(self, model, group, ctx):
        return None

@detprune.hookimpl
def detprune_criteria():
    return {"l1": OtherL1}
'''

ADAPTER_OK = '''
import detprune

class Net:
    """A model family."""
    def build(self):
        return None

@detprune.hookimpl
def detprune_model_adapters():
    return {"net": Net}
'''

IMPORT_FAILS = """
import detprune
import a_module_that_does_not_exist
"""

HOOK_RAISES = """
import detprune

@detprune.hookimpl
def detprune_criteria():
    raise RuntimeError("scores need scipy")

class Fine:
    def build(self):
        return None

@detprune.hookimpl
def detprune_model_adapters():
    return {"fine": Fine}
"""


def _host(tmp_path, monkeypatch, *dists) -> PluginHost:
    monkeypatch.syspath_prepend(str(tmp_path))
    for args in dists:
        make_dist(tmp_path, *args)
    h = PluginHost()
    h.load_entry_points(entry_points(tmp_path))
    return h


def test_names_and_factories_are_registered(tmp_path, monkeypatch):
    h = _host(tmp_path, monkeypatch, ("crit-a", "1.0", "crit_a_mod", CRIT_A), ("adapt", "2.1", "adapt_mod", ADAPTER_OK))
    assert h.names("criterion") == ["l1", "l2"]
    assert h.names("adapter") == ["net"]
    entry = h.get("criterion", "l1")
    assert (entry.plugin.dist, entry.plugin.version, entry.description) == ("crit-a", "1.0", "Sum of absolute weights.")
    assert type(h.criterion("l2")).__name__ == "L2"


def test_duplicate_name_is_an_error_naming_both_distributions(tmp_path, monkeypatch):
    h = _host(
        tmp_path,
        monkeypatch,
        ("crit-a", "1.0", "crit_a_mod", CRIT_A),
        ("crit-b", "0.3", "crit_b_mod", CRIT_B_SAME_NAME),
    )
    with pytest.raises(PluginConflictError) as err:
        h.get("criterion", "l1")
    assert str(err.value) == (
        "criterion 'l1' is offered by more than one plugin: 'crit-a' (distribution 'crit-a 1.0') and "
        "'crit-b' (distribution 'crit-b 0.3'). Uninstall one of them, or set DETPRUNE_PLUGINS to the "
        "distributions that should load."
    )
    # the other name of the same plugin is unaffected
    assert h.get("criterion", "l2").plugin.dist == "crit-a"


def test_plugin_that_fails_to_import_does_not_stop_the_others(tmp_path, monkeypatch):
    h = _host(
        tmp_path,
        monkeypatch,
        ("crit-a", "1.0", "crit_a_mod", CRIT_A),
        ("bad-import", "0.1", "bad_import_mod", IMPORT_FAILS),
    )
    assert h.names("criterion") == ["l1", "l2"]
    [broken] = h.broken
    assert broken.stage == "import"
    assert broken.error == "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    with pytest.raises(BrokenPluginError) as err:
        h.get("criterion", "fancy")
    assert str(err.value) == (
        "unknown criterion 'fancy'. Known criteria: l1, l2. These plugins failed and may have provided it: "
        "plugin 'bad-import' (distribution 'bad-import 0.1') failed to import: "
        "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    )


def test_plugin_that_raises_in_its_hook_is_isolated(tmp_path, monkeypatch):
    h = _host(
        tmp_path, monkeypatch, ("crit-a", "1.0", "crit_a_mod", CRIT_A), ("raiser", "0.2", "raiser_mod", HOOK_RAISES)
    )
    assert h.names("criterion") == ["l1", "l2"]
    assert h.names("adapter") == ["fine"]  # the same plugin's other hook still works
    [broken] = h.broken
    assert (broken.stage, broken.kind) == ("detprune_criteria()", "criterion")
    with pytest.raises(BrokenPluginError) as err:
        h.get("criterion", "scipy-crit")
    assert str(err.value).endswith(
        "These plugins failed and may have provided it: plugin 'raiser' (distribution 'raiser 0.2') "
        "raised in detprune_criteria(): RuntimeError: scores need scipy"
    )
    # a kind the broken hook does not cover gives a plain unknown-name error
    with pytest.raises(UnknownPluginError):
        h.get("adapter", "missing")


def test_unknown_name_suggests_a_close_match(tmp_path, monkeypatch):
    h = _host(tmp_path, monkeypatch, ("crit-a", "1.0", "crit_a_mod", CRIT_A))
    with pytest.raises(UnknownPluginError) as err:
        h.get("criterion", "L1")
    assert str(err.value) == "unknown criterion 'L1'. Did you mean 'l1'? Known criteria: l1, l2."
    with pytest.raises(UnknownPluginError) as err:
        h.get("criterion", "l22")
    assert str(err.value) == "unknown criterion 'l22'. Did you mean 'l2'? Known criteria: l1, l2."
    with pytest.raises(UnknownPluginError) as err:
        h.get("criterion", "taylor")
    assert str(err.value) == "unknown criterion 'taylor'. Known criteria: l1, l2."
    with pytest.raises(UnknownPluginError) as err:
        h.get("pruner", "slimming")
    assert str(err.value) == "unknown pruner 'slimming'. Known pruners: (none)."


def test_factory_options_error_names_the_plugin(tmp_path, monkeypatch):
    h = _host(tmp_path, monkeypatch, ("crit-a", "1.0", "crit_a_mod", CRIT_A))
    with pytest.raises(Exception) as err:
        h.criterion("l1", p=3)
    assert "criterion 'l1' from 'crit-a' (distribution 'crit-a 1.0') rejected its options {'p': 3}" in str(err.value)


def test_in_process_registration():
    import detprune

    class Plugin:
        @detprune.hookimpl
        def detprune_pruners(self):
            class Keep:
                """Keep everything."""

                def plan(self, model, graph, ctx):
                    return None

            return {"keep": Keep}

    h = PluginHost()
    h.register(Plugin(), name="mine")
    assert h.names("pruner") == ["keep"]
    assert h.get("pruner", "keep").plugin.dist == "<in-process>"


def test_env_var_selects_third_party_distributions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    make_dist(tmp_path, "crit-a", "1.0", "crit_a_mod", CRIT_A)
    make_dist(tmp_path, "adapt", "2.1", "adapt_mod", ADAPTER_OK)
    eps = entry_points(tmp_path)
    monkeypatch.setattr(host_mod.metadata, "entry_points", lambda group: [e for e in eps if e.group == group])
    assert {e.name for e in host_mod.selected_entry_points(env="adapt")} == {"adapt"}
    assert host_mod.selected_entry_points(env="") == []
    assert {e.name for e in host_mod.selected_entry_points(env=None)} >= {"adapt", "crit-a"}


def test_cli_lists_plugins_broken_ones_and_conflicts(tmp_path, monkeypatch, capsys):
    from detprune.cli import main

    h = _host(
        tmp_path,
        monkeypatch,
        ("crit-a", "1.0", "crit_a_mod", CRIT_A),
        ("crit-b", "0.3", "crit_b_mod", CRIT_B_SAME_NAME),
        ("bad-import", "0.1", "bad_import_mod", IMPORT_FAILS),
    )
    monkeypatch.setattr(host_mod, "_HOST", h)
    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(p["kind"], p["name"], p["distribution"]) for p in out["plugins"]] == [("criterion", "l2", "crit-a")]
    assert out["plugins"][0]["description"] == "Euclidean norm."
    assert out["broken"][0]["plugin"] == "bad-import"
    assert out["conflicts"][0]["name"] == "l1"
    assert main(["plugins", "--kind", "criterion"]) == 0
    text = capsys.readouterr().out
    assert "criterion  l2    crit-a 1.0    Euclidean norm." in text
    assert "CONFLICT  criterion 'l1' is offered by: crit-a 1.0, crit-b 0.3" in text
    assert "BROKEN    plugin 'bad-import' (distribution 'bad-import 0.1') failed to import" in text


def test_cli_error_is_one_line_without_traceback(tmp_path, monkeypatch, capsys):
    from detprune.cli import main
    from detprune.errors import DetpruneError

    def boom(args):
        raise DetpruneError("data/x.txt:3: field 'category': 12 is outside 0..11")

    import argparse

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: argparse.Namespace(func=boom))
    assert main([]) == 2
    assert capsys.readouterr().err == "detprune: error: data/x.txt:3: field 'category': 12 is outside 0..11\n"


NO_SCORE = '''
import detprune

class Half:
    """Forgot its score method."""

class Whole:
    """Complete."""
    def score(self, model, group, ctx):
        return None

@detprune.hookimpl
def detprune_criteria():
    return {"half": Half, "whole": Whole}
'''


def test_a_missing_required_method_is_reported_at_load_naming_plugin_and_distribution(tmp_path, monkeypatch):
    h = _host(tmp_path, monkeypatch, ("crit-half", "0.3", "crit_half_mod", NO_SCORE))
    assert h.names("criterion") == ["whole"]
    with pytest.raises(BrokenPluginError) as err:
        h.get("criterion", "half")
    assert (
        "plugin 'crit-half' (distribution 'crit-half 0.3') raised in detprune_criteria(): "
        "criterion 'half' (crit_half_mod.Half) does not define 'score'"
    ) in str(err.value)


def test_a_duck_typed_pruner_gets_the_lifecycle_no_ops(tmp_path, monkeypatch):
    from detprune.plugin.protocols import Pruner

    class Plain:
        """Only plan."""

        report = "mine"

        def plan(self, model, graph, ctx):
            return "a plan"

    h = PluginHost()
    h.registry["pruner"]["plain"] = host_mod.Entry("pruner", "plain", Plain, host_mod.PluginInfo("p", "d", "1", "m"))
    pruner = h.create("pruner", "plain")
    assert isinstance(pruner, Pruner) and pruner.plan(None, None, None) == "a plan"
    assert pruner.on_after_step(None) is None and pruner.state_dict() is None and pruner.report == "mine"
    pruner.history = [1]
    assert pruner._inner.history == [1]


def test_plugins_name_shows_each_option_with_its_flag_and_doc(capsys):
    from detprune.cli import main

    assert main(["plugins", "sketch"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("compensator 'sketch' from ")
    assert "  alpha (default 0.3; --alpha): compensate a group when a producer's layer prune ratio exceeds it" in out
    assert "  mode (default 'fd'; --compensator-opt mode=...): the sketch: ``fd``" in out
    assert main(["plugins", "slimmin"]) == 2
    assert capsys.readouterr().err.strip() == (
        "detprune: error: no plugin is named 'slimmin'. Did you mean 'slimming'? `detprune plugins` lists them all"
    )


def test_every_built_in_option_is_documented():
    """A method's options are documented by the plugin itself (`detprune plugins NAME` prints them)."""
    import detprune
    from detprune.plugin.describe import options

    undocumented = [
        f"{e.kind} {e.name}: {o.name}"
        for e in detprune.plugins().entries()
        if e.plugin.dist == "detprune"
        for o in options(e.kind, e.factory)
        if not o.doc
    ]
    assert undocumented == []

"""save -> load rebuilds the dense model, replays the plan and loads weights (weights_only);
tampered plans, wrong builders and foreign files fail with a clear message."""
from __future__ import annotations

import json

import pytest
import torch

import detprune
from detprune.errors import RecipeError
from detprune.graph.recipe import _plan_digest, read_recipe
from zoo import SimpleCNN, TinyResNet, YoloToy, run

BUILDER = {"callable": "zoo:YoloToy", "args": {"nc": 3, "w": 16}}


def _result(tmp_path, **kw):
    torch.manual_seed(0)
    model = YoloToy(nc=3, w=16).eval()
    x = torch.rand(1, 3, 32, 32)
    result = detprune.prune(model, x, ratio=0.4, builder=BUILDER, **kw)
    path = detprune.save(result, tmp_path / "pruned.pt")
    return result, x, path


def test_round_trip_gives_identical_outputs(tmp_path):
    result, x, path = _result(tmp_path, round_to=4)
    loaded = detprune.load(path)
    assert all(torch.equal(u, v) for u, v in zip(run(result.model, (x,)), run(loaded, (x,))))
    assert sum(p.numel() for p in loaded.parameters()) == result.params_after
    data = torch.load(path, weights_only=True)  # no pickled module in the file
    assert set(data) == {"recipe", "state_dict"}
    recipe = json.loads(data["recipe"])
    assert recipe["builder"] == BUILDER and recipe["input_shapes"] == [[1, 3, 32, 32]]
    assert recipe["detprune_version"] == detprune.__version__
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]  # the temporary file was renamed


def test_round_trip_through_a_registered_adapter(tmp_path):
    class Adapter:
        """A tiny CNN adapter for the recipe test."""

        name = "recipe-test-cnn"

        def __init__(self, n=5):
            self.args = {"n": n}

        def build(self):
            torch.manual_seed(3)
            return SimpleCNN(self.args["n"]).eval()

    class Plugin:
        @detprune.hookimpl
        def detprune_model_adapters(self):
            return {"recipe-test-cnn": Adapter}

    if "recipe-test-cnn" not in detprune.plugins().names("adapter"):
        detprune.plugins().register(Plugin(), "recipe-test-plugin")
    adapter = detprune.plugins().adapter("recipe-test-cnn", n=4)
    model, x = adapter.build(), torch.rand(2, 3, 16, 16)
    result = detprune.prune(model, x, ratio=0.5, builder=adapter, protected=("fc",))
    path = detprune.save(result, tmp_path / "cnn.pt")
    assert read_recipe(path)[0]["builder"] == {"adapter": "recipe-test-cnn", "args": {"n": 4}}
    assert torch.equal(run(detprune.load(path), (x,))[0], run(result.model, (x,))[0])


def _rewrite(path, change):
    data = torch.load(path, weights_only=True)
    recipe = json.loads(data["recipe"])
    change(recipe)
    data["recipe"] = json.dumps(recipe)
    torch.save(data, path)


def test_tampered_plan_is_refused(tmp_path):
    _, _, path = _result(tmp_path)

    def drop_one(recipe):
        gid, kept = next(iter(recipe["plan"]["kept"].items()))
        recipe["plan"]["kept"][gid] = kept[1:]

    _rewrite(path, drop_one)
    with pytest.raises(RecipeError, match=r"pruned.pt: field 'plan' was modified after saving \(its checksum does not match 'plan_sha256'\)"):
        detprune.load(path)

    def bad_group(recipe):
        recipe["plan"]["kept"]["999"] = [0]
        recipe["plan_sha256"] = _plan_digest(recipe["plan"])

    _rewrite(path, bad_group)
    with pytest.raises(RecipeError, match=r"field 'plan' does not fit the model: plan names group 999"):
        detprune.load(path)


def test_resized_plan_with_fixed_checksum_fails_on_the_weights(tmp_path):
    _, _, path = _result(tmp_path)

    def keep_more(recipe):
        gid, kept = next(iter(recipe["plan"]["kept"].items()))
        recipe["plan"]["kept"][gid] = sorted(set(kept) | {k for k in range(max(kept) + 1)})
        recipe["plan_sha256"] = _plan_digest(recipe["plan"])

    _rewrite(path, keep_more)
    with pytest.raises(RecipeError, match=r"the saved weights do not fit the pruned model: size mismatch"):
        detprune.load(path)


def test_wrong_builder_is_refused(tmp_path):
    _, _, path = _result(tmp_path)
    with pytest.raises(RecipeError, match=r"the model built by the given build\(\) does not have the structure the plan was made for"):
        detprune.load(path, build=lambda: TinyResNet().eval())
    with pytest.raises(RecipeError, match=r"does not have the structure"):
        detprune.load(path, build={"callable": "zoo:YoloToy", "args": {"nc": 3, "w": 8}})
    with pytest.raises(RecipeError, match=r"cannot import 'zoo:Nope'"):
        detprune.load(path, build={"callable": "zoo:Nope"})
    assert detprune.load(path, build=lambda: YoloToy(nc=3, w=16)) is not None


def test_missing_builder_and_foreign_files(tmp_path):
    model, x = SimpleCNN().eval(), torch.rand(1, 3, 16, 16)
    result = detprune.prune(model, x, ratio=0.3)
    with pytest.raises(RecipeError, match=r"cannot save a recipe without knowing how to rebuild the dense model: pass builder="):
        detprune.save(result, tmp_path / "x.pt")
    detprune.save(result, tmp_path / "x.pt", builder={"callable": "zoo:SimpleCNN"})
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(RecipeError, match=r"other.pt: not a detprune recipe file \(expected keys 'recipe' and 'state_dict'\)"):
        detprune.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(RecipeError, match=r"junk.pt: not a detprune recipe file"):
        detprune.load(tmp_path / "junk.pt")
    with pytest.raises(RecipeError, match=r"missing.pt: no such file"):
        detprune.load(tmp_path / "missing.pt")

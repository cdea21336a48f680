"""save -> load rebuilds the dense model, replays the plans and loads weights (weights_only);
loading a file runs no code the file names; tampered recipes, wrong builders and foreign files fail
with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import detprune
from detprune.errors import RecipeError
from detprune.recipe import FORMAT, digest, read_recipe
from zoo import SimpleCNN, TinyResNet, YoloToy, run

BUILDER = {"callable": "zoo:YoloToy", "args": {"nc": 3, "w": 16}}
TRUST = ["zoo:YoloToy"]


def _result(tmp_path, **kw):
    torch.manual_seed(0)
    model = YoloToy(nc=3, w=16).eval()
    x = torch.rand(1, 3, 32, 32)
    result = detprune.prune(model, x, ratio=0.4, builder=BUILDER, **kw)
    path = detprune.save(result, tmp_path / "pruned.pt")
    return result, x, path


class CnnAdapter:
    """A tiny CNN adapter for the recipe tests (no ``name`` attribute: found through the registry)."""

    task = "classification"

    def __init__(self, n=5):
        self.args = {"n": n}

    def build(self):
        torch.manual_seed(3)
        return SimpleCNN(self.args["n"]).eval()


class CnnPlugin:
    @detprune.hookimpl
    def detprune_model_adapters(self):
        return {"recipe-test-cnn": CnnAdapter}


@pytest.fixture
def cnn_adapter():
    if "recipe-test-cnn" not in detprune.plugins().names("adapter"):
        detprune.plugins().register(CnnPlugin(), "recipe-test-plugin")
    return detprune.plugins().adapter("recipe-test-cnn", n=4)


def test_round_trip_gives_identical_outputs(tmp_path):
    result, x, path = _result(tmp_path, round_to=4)
    loaded = detprune.load(path, trusted=TRUST)
    assert all(torch.equal(u, v) for u, v in zip(run(result.model, (x,)), run(loaded, (x,))))
    assert sum(p.numel() for p in loaded.parameters()) == result.params_after
    data = torch.load(path, weights_only=True)  # no pickled module in the file
    assert set(data) == {"recipe", "state_dict"}
    recipe = json.loads(data["recipe"])
    assert recipe["format"] == FORMAT and recipe["builder"] == BUILDER
    assert [s["input_shapes"] for s in recipe["stages"]] == [[[1, 3, 32, 32]]]
    assert recipe["detprune_version"] == detprune.__version__ and recipe["sha256"] == digest(recipe)
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]  # the temporary file was renamed


def test_round_trip_through_a_registered_adapter_needs_no_trust(tmp_path, cnn_adapter):
    model, x = cnn_adapter.build(), torch.rand(2, 3, 16, 16)
    result = detprune.prune(model, x, ratio=0.5, builder=cnn_adapter, protected=("fc",))
    path = detprune.save(result, tmp_path / "cnn.pt")
    assert read_recipe(path)[0]["builder"] == {"adapter": "recipe-test-cnn", "args": {"n": 4}}
    assert torch.equal(run(detprune.load(path), (x,))[0], run(result.model, (x,))[0])


def test_pruning_a_loaded_model_again_chains_the_stages(tmp_path, cnn_adapter):
    """Iterative pruning: the second recipe replays both passes from the adapter alone (no file path)."""
    model, x = cnn_adapter.build(), torch.rand(2, 3, 16, 16)
    first = detprune.load(
        detprune.save(detprune.prune(model, x, ratio=0.25, builder=cnn_adapter, protected=("fc",)), tmp_path / "one.pt")
    )
    second = detprune.prune(first, x, ratio=0.5, protected=("fc",))
    path = detprune.save(second, tmp_path / "two.pt")
    recipe = read_recipe(path)[0]
    assert len(recipe["stages"]) == 2 and recipe["builder"]["adapter"] == "recipe-test-cnn"
    (tmp_path / "one.pt").unlink()  # the second file stands alone
    again = detprune.load(path)
    assert torch.equal(run(again, (x,))[0], run(second.model, (x,))[0])
    assert sum(p.numel() for p in again.parameters()) == second.params_after < second.params_before


def _rewrite(path, change, refresh=True):
    data = torch.load(path, weights_only=True)
    recipe = json.loads(data["recipe"])
    change(recipe)
    if refresh:
        recipe["sha256"] = digest(recipe)
    data["recipe"] = json.dumps(recipe)
    torch.save(data, path)


def test_a_recipe_cannot_run_the_code_it_names(tmp_path):
    """A tampered builder naming subprocess.run must not run: no marker file, one clear error."""
    _, _, path = _result(tmp_path)
    marker = tmp_path / "PWNED"
    _rewrite(path, lambda r: r.update(builder={"callable": "subprocess:run", "args": {"args": ["touch", str(marker)]}}))
    with pytest.raises(
        RecipeError,
        match=r"field 'builder' names the Python callable 'subprocess:run'; detprune "
        r"rebuilds models from a file only through registered model adapters",
    ):
        detprune.load(path)
    assert not marker.exists()
    # the command line refuses it too, before building anything
    card = tmp_path / "card.yaml"
    card.write_text("name: c\ntask: detection\nformat: visdrone\nroot: .\nsplits: {val: val}\nclasses: [a]\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detprune.cli",
            "eval",
            "--model",
            "yolov3",
            "--weights",
            str(path),
            "--data",
            str(card),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and not marker.exists()
    assert "rebuilds its model with the Python callable 'subprocess:run'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_leaf_names_are_never_imported(tmp_path, capsys):
    """'this:s' would print the Zen of Python on import; leaves are matched against the model's classes."""
    _, _, path = _result(tmp_path)
    _rewrite(path, lambda r: r["stages"][0].update(leaves=["this:s"]))
    with pytest.raises(
        RecipeError, match=r"field 'leaves': 'this:s' is not the class of any module of the rebuilt model"
    ):
        detprune.load(path, trusted=TRUST)
    assert "Beautiful is better" not in capsys.readouterr().out


def test_tampered_recipe_is_refused_before_building(tmp_path):
    _, _, path = _result(tmp_path)

    def drop_one(recipe):
        plan = recipe["stages"][0]["plan"]
        gid, kept = next(iter(plan["kept"].items()))
        plan["kept"][gid] = kept[1:]

    _rewrite(path, drop_one, refresh=False)
    with pytest.raises(
        RecipeError,
        match=r"pruned.pt: the recipe was modified after saving \(its checksum does not "
        r"match field 'sha256'\)",
    ):
        detprune.load(path, trusted=TRUST)

    _rewrite(path, lambda r: r["stages"][0]["plan"]["kept"].update({"999": [0]}))
    with pytest.raises(RecipeError, match=r"field 'plan' does not fit the model: plan names group 999"):
        detprune.load(path, trusted=TRUST)


def test_resized_plan_with_fixed_checksum_fails_on_the_weights(tmp_path):
    _, _, path = _result(tmp_path)

    def keep_more(recipe):
        plan = recipe["stages"][0]["plan"]
        gid, kept = next(iter(plan["kept"].items()))
        plan["kept"][gid] = sorted(set(kept) | set(range(max(kept) + 1)))

    _rewrite(path, keep_more)
    with pytest.raises(RecipeError, match=r"the saved weights do not fit the pruned model: size mismatch"):
        detprune.load(path, trusted=TRUST)


def test_wrong_builder_is_refused(tmp_path):
    _, _, path = _result(tmp_path)
    with pytest.raises(
        RecipeError, match=r"the model built by the given build\(\) does not have the structure the plan was made for"
    ):
        detprune.load(path, build=lambda: TinyResNet().eval())
    with pytest.raises(RecipeError, match=r"does not have the structure"):
        detprune.load(path, build={"callable": "zoo:YoloToy", "args": {"nc": 3, "w": 8}})
    with pytest.raises(RecipeError, match=r"cannot import 'zoo:Nope'"):
        detprune.load(path, build={"callable": "zoo:Nope"})
    assert detprune.load(path, build=lambda: YoloToy(nc=3, w=16)) is not None


def test_format_1_files_still_load(tmp_path):
    result, x, path = _result(tmp_path)
    recipe = read_recipe(path)[0]
    stage = recipe["stages"][0]
    import hashlib

    old = {
        "format": "detprune-recipe/1",
        "builder": recipe["builder"],
        **stage,
        "plan_sha256": hashlib.sha256(json.dumps(stage["plan"], sort_keys=True).encode()).hexdigest(),
    }
    torch.save({"recipe": json.dumps(old), "state_dict": result.model.state_dict()}, tmp_path / "v1.pt")
    assert torch.equal(run(detprune.load(tmp_path / "v1.pt", trusted=TRUST), (x,))[0], run(result.model, (x,))[0])


def test_missing_builder_and_foreign_files(tmp_path):
    model, x = SimpleCNN().eval(), torch.rand(1, 3, 16, 16)
    result = detprune.prune(model, x, ratio=0.3)
    with pytest.raises(
        RecipeError, match=r"cannot save a recipe without knowing how to rebuild the dense model: pass builder="
    ):
        detprune.save(result, tmp_path / "x.pt")
    detprune.save(result, tmp_path / "x.pt", builder={"callable": "zoo:SimpleCNN"})
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(
        RecipeError, match=r"other.pt: not a detprune recipe file \(expected keys 'recipe' and 'state_dict'\)"
    ):
        detprune.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(RecipeError, match=r"junk.pt: not a detprune recipe file"):
        detprune.load(tmp_path / "junk.pt")
    with pytest.raises(RecipeError, match=r"missing.pt: no such file"):
        detprune.load(tmp_path / "missing.pt")


def test_an_unregistered_adapter_without_a_name_is_a_clear_error():
    class Anonymous:
        args = {"n": 1}

    model, x = SimpleCNN().eval(), torch.rand(1, 3, 16, 16)
    with pytest.raises(
        ValueError, match=r"cannot record how to rebuild the model from builder .*pass an adapter instance"
    ):
        detprune.prune(model, x, ratio=0.3, builder=Anonymous())

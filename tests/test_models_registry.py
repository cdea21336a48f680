"""The six built-in adapters are registered through entry points, meet the ModelAdapter protocol,
and rebuild the same model from their JSON-serialised args (what a pruning recipe stores)."""

from __future__ import annotations

import json

import pytest
import torch

import detprune
from detprune.plugin.protocols import ModelAdapter

NAMES = {
    "vgg16-cifar": "classification",
    "resnet56-cifar": "classification",
    "resnet18": "classification",
    "resnet50": "classification",
    "yolov3": "detection",
    "centernet-resnet18": "detection",
}


def test_all_builtin_adapters_are_registered_by_detprune():
    host = detprune.plugins()
    assert set(NAMES) <= set(host.names("adapter"))
    for name in NAMES:
        entry = host.get("adapter", name)
        assert entry.plugin.dist == "detprune" and entry.plugin.name.startswith("models-")
        assert entry.description  # first docstring line, shown by `detprune plugins`


@pytest.mark.parametrize("name", list(NAMES))
def test_protocol_and_recipe_round_trip(name):
    small = {
        "yolov3": {"width": 0.125, "depth": 0.34, "img_size": 64},
        "centernet-resnet18": {"width": 0.125, "img_size": 64},
        "resnet18": {"img_size": 64},
        "resnet50": {"img_size": 64},
    }.get(name, {})
    a = detprune.plugins().adapter(name, **small)
    assert isinstance(a, ModelAdapter) and a.task == NAMES[name]
    stored = json.loads(json.dumps({"adapter": name, "args": a.args}))
    b = detprune.plugins().adapter(stored["adapter"], **stored["args"])
    assert b.args == a.args
    with torch.device("meta"):
        sa, sb = a.build().state_dict(), b.build().state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    (x,) = a.example_inputs(3)
    assert x.shape == (3, 3, a.args["img_size"], a.args["img_size"]) and float(x.min()) >= 0 and float(x.max()) <= 1

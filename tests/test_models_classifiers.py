"""Classifier adapters: pinned parameter counts, forward/loss/backward, protected layers, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import detprune
from detprune.errors import DetpruneError, PluginError


def adapter(name, **args):
    return detprune.plugins().adapter(name, **args)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name,args,expected",
    [
        ("vgg16-cifar", {"num_classes": 10}, 14_724_042),  # seed 001 table 2: 14.72M
        ("vgg16-cifar", {"num_classes": 100}, 14_770_212),  # 14.77M
        ("resnet56-cifar", {}, 853_018),  # He et al. 2016 table 6: 0.85M
        ("resnet56-cifar", {"shortcut": "B"}, 855_770),  # + 1x1 projections 16->32, 32->64 with BN
        ("resnet18", {}, 11_689_512),
        ("resnet50", {}, 25_557_032),
    ],
)
def test_parameter_counts_are_pinned(name, args, expected):
    with torch.device("meta"):
        model = adapter(name, **args).build()
    assert n_params(model) == expected


def test_vgg16_cifar_layout_matches_network_slimming():
    model = adapter("vgg16-cifar").build()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert [type(m) for m in model.modules() if isinstance(m, nn.Linear)] == [nn.Linear]
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.all(bn.weight == 0.5)  # network-slimming init (gamma 0.5)


@pytest.mark.parametrize(
    "name,args",
    [
        ("vgg16-cifar", {"width": 0.25}),
        ("resnet56-cifar", {"width": 0.5}),
        ("resnet56-cifar", {"width": 0.5, "shortcut": "B"}),
        ("resnet18", {"num_classes": 7, "img_size": 64}),
        ("resnet50", {"num_classes": 7, "img_size": 64}),
    ],
)
def test_forward_loss_backward_on_cpu(name, args):
    a = adapter(name, **args)
    assert a.task == "classification"
    json.dumps(a.args)
    model = a.build()
    (x,) = a.example_inputs(batch_size=2)
    n = a.args["num_classes"]
    out = model(x)
    assert out.shape == (2, n)
    loss, parts = a.loss(out, torch.tensor([0, n - 1]))
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"ce"}
    assert all(p.grad is not None for p in model.parameters())
    probs = a.decode(out)
    assert len(probs) == 2 and torch.allclose(probs[0].sum(), torch.tensor(1.0))


@pytest.mark.parametrize("name,expected", [("vgg16-cifar", "classifier"), ("resnet56-cifar", "fc"), ("resnet18", "fc")])
def test_protected_is_the_last_linear(name, expected):
    a = adapter(name)
    model = a.build()
    assert a.protected(model) == [expected]
    assert isinstance(model.get_submodule(expected), nn.Linear)


def test_resnet56_has_27_blocks_and_option_a_shortcuts_without_parameters():
    model = adapter("resnet56-cifar").build()
    blocks = [m for m in model.modules() if type(m).__name__ == "CifarBasicBlock"]
    assert len(blocks) == 27
    pads = [b.shortcut for b in blocks if type(b.shortcut).__name__ == "PadShortcut"]
    assert len(pads) == 2 and all(n_params(p) == 0 for p in pads)
    x = torch.randn(1, 16, 8, 8)
    y = pads[0](x)  # 16 -> 32 channels at half resolution, the input in the middle channels
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2]) and not y[:, :8].any() and not y[:, 24:].any()


@pytest.mark.parametrize("name", ["vgg16-cifar", "resnet56-cifar", "resnet18"])
def test_models_trace_with_torch_fx_and_have_no_inplace_activations(name):
    model = adapter(name, img_size=32 if "cifar" in name else 64).build().eval()
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32) if "cifar" in name else torch.randn(1, 3, 64, 64)
    assert torch.equal(gm(x), model(x))
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_bad_build_arguments_are_clear_errors():
    with pytest.raises(DetpruneError, match=r"adapter 'vgg16-cifar': num_classes must be a positive integer, got 0"):
        adapter("vgg16-cifar", num_classes=0)
    with pytest.raises(
        DetpruneError, match=r"adapter 'vgg16-cifar': img_size must be a multiple of 32 \(five 2x pools\), got 40"
    ):
        adapter("vgg16-cifar", img_size=40)
    with pytest.raises(DetpruneError, match=r"adapter 'resnet56-cifar': shortcut must be 'A' or 'B', got 'C'"):
        adapter("resnet56-cifar", shortcut="C")
    with pytest.raises(PluginError, match=r"model adapter 'resnet50' .* rejected its options \{'width': 0.5\}"):
        adapter("resnet50", width=0.5)


def test_vgg_at_a_larger_input_widens_the_classifier():
    a = adapter("vgg16-cifar", img_size=64, width=0.125)
    model = a.build()
    assert model(*a.example_inputs(2)).shape == (2, 10)
    assert model.classifier.in_features == 64 * 4

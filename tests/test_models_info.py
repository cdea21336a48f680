"""`detprune info`: parameters, FLOPs, prunable groups and protected layers of an adapter's model."""

from __future__ import annotations

import json

from detprune.cli import main


def test_json_for_vgg16_cifar100(capsys):
    assert main(["info", "--model", "vgg16-cifar", "--num-classes", "100", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 14_770_212
    assert info["flops"] == 2 * 313_196_544 + 2 * 512 * 100  # 13 convs at 32x32 + the Linear, 2 x MAC
    assert info["protected"] == ["classifier"]
    assert info["args"] == {"num_classes": 100, "img_size": 32, "width": 1.0}
    # 13 conv-BN groups; the Linear's output reaches the model output
    assert info["groups"]["prunable"] == 13
    assert info["groups"]["prunable_channels"] == 64 * 2 + 128 * 2 + 256 * 3 + 512 * 6


def test_table_for_a_small_yolov3(capsys):
    assert main(["info", "--model", "yolov3", "--width", "0.125", "--depth", "0.34", "--img-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "model       yolov3 (detection)" in out
    assert "input       1x3x128x128" in out
    assert out.count("layers.") == 3 and "protected   layers." in out
    assert "FLOPs" in out and "2 x MAC" in out


def test_unknown_model_and_bad_option_are_one_line_errors(capsys):
    assert main(["info", "--model", "yolo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detprune: error: unknown model adapter 'yolo'. Did you mean 'yolov3'?")
    assert main(["info", "--model", "resnet18", "--depth", "0.5"]) == 2
    assert "rejected its options {'depth': 0.5}" in capsys.readouterr().err


def test_groups_for_yolov3_full_depth(capsys):
    assert main(["info", "--model", "yolov3", "--width", "0.0625", "--img-size", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # 72 BN convs; the 5 residual groups merge 2 + 3 + 9 + 9 + 5 producers: 72 - 28 + 5 = 49 prunable groups,
    # the 3 output convs are protected
    assert info["groups"]["prunable"] == 49

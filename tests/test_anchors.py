"""k-means anchors with the 1 - IoU distance, box shapes from VisDrone files, `detprune anchors`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from detprune.cli import main
from detprune.data.anchors import (
    estimate_frame,
    format_anchors,
    kmeans_anchors,
    mean_best_iou,
    visdrone_box_shapes,
    wh_iou,
    write_card_anchors,
)
from detprune.errors import DataFormatError


def test_wh_iou_by_hand():
    iou = wh_iou(np.array([[10.0, 20.0]]), np.array([[10.0, 20.0], [20.0, 10.0], [5.0, 5.0]]))
    assert np.allclose(iou, [[1.0, 100 / 300, 25 / 200]])


def test_kmeans_recovers_well_separated_shapes():
    rng = np.random.default_rng(0)
    centres = np.array([[6, 8], [20, 12], [12, 30], [60, 40], [150, 110]], float)
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, size=(200, 2)) for c in centres])
    anchors, iou = kmeans_anchors(wh, n=5, seed=1)
    assert np.allclose(anchors, centres, rtol=0.03)  # sorted by area, like the centres
    assert iou > 0.9 and iou == pytest.approx(mean_best_iou(wh, anchors))


def test_kmeans_beats_the_best_single_anchor_and_is_deterministic():
    rng = np.random.default_rng(2)
    wh = rng.lognormal(mean=2.5, sigma=0.6, size=(2000, 2))
    a1, iou1 = kmeans_anchors(wh, n=9, seed=0)
    a2, iou2 = kmeans_anchors(wh, n=9, seed=0)
    assert np.array_equal(a1, a2) and iou1 == iou2
    single, iou_single = kmeans_anchors(wh, n=1, seed=0)
    assert iou1 > iou_single + 0.15
    assert np.all(np.diff(a1.prod(1)) >= 0)


def test_too_few_boxes_is_a_clear_error():
    with pytest.raises(DataFormatError, match="k-means needs at least 9 boxes with positive width and height, got 2"):
        kmeans_anchors(np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 5.0]]), n=9)


def test_estimate_frame_snaps_to_the_smallest_standard_frame():
    assert estimate_frame(955, 538) == (960, 540)
    assert estimate_frame(1360, 700) == (1360, 765)
    assert estimate_frame(1289, 964) == (1400, 1050)
    assert estimate_frame(1314, 1051) == (1920, 1080)
    assert estimate_frame(2500, 1000) == (2500, 1000)  # larger than every known frame: the extent itself
    assert format_anchors(np.array([[0.2, 3.6], [10.5, 7.49]])) == [[1, 4], [10, 7]]


def test_write_card_anchors_replaces_only_that_key(tmp_path):
    card = tmp_path / "c.yaml"
    card.write_text("name: x\n# keep me\nanchors:\n  - [1, 2]\n  - [3, 4]\nimg_size: 608\n")
    write_card_anchors(card, [[5, 6], [7, 8]], "k-means (1-IoU) anchors test", 608)
    text = card.read_text()
    assert "# keep me" in text and "img_size: 608" in text and "[1, 2]" not in text
    assert yaml.safe_load(text)["anchors"] == [[5, 6], [7, 8]]
    write_card_anchors(card, [[9, 9]], "k-means (1-IoU) anchors again", 320)
    assert text.count("k-means") == 1 and card.read_text().count("k-means") == 1
    assert yaml.safe_load(card.read_text()) == {
        "name": "x",
        "anchors": [[9, 9]],
        "anchors_img_size": 320,
        "img_size": 608,
    }


def test_card_anchors_rescale_to_the_input_size():
    from types import SimpleNamespace

    from detprune.data.anchors import card_anchors

    card = SimpleNamespace(extra={"anchors": [[10, 20], [30, 60]], "anchors_img_size": 608}, img_size=416)
    assert card_anchors(card, 608) == [[10.0, 20.0], [30.0, 60.0]]
    assert card_anchors(card, 304) == [[5.0, 10.0], [15.0, 30.0]]
    card.extra.pop("anchors_img_size")  # falls back to the card's img_size
    assert card_anchors(card, 208) == [[5.0, 10.0], [15.0, 30.0]]
    assert card_anchors(SimpleNamespace(extra={}, img_size=None), 320) is None


def _visdrone_split(root, lines_by_file):
    ann = root / "annotations"
    ann.mkdir(parents=True)
    for name, lines in lines_by_file.items():
        (ann / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return ann


def test_box_shapes_skip_ignored_categories_and_scale_by_the_long_side(tmp_path):
    ann = _visdrone_split(
        tmp_path / "split",
        {
            "0000001_00001_d_0000001": ["0,0,1920,1080,0,0,0,0", "10,10,40,20,1,4,0,0", "5,5,8,8,0,11,0,0"],
            "0000002_00001_d_0000001": ["100,100,30,60,1,1,0,0", "900,500,20,10,1,2,0,0"],
        },
    )
    shapes = visdrone_box_shapes(ann)
    assert shapes.sizes_estimated == 2 and shapes.frames == {"1920x1080": 1, "960x540": 1}
    assert np.array_equal(shapes.wh, [[40, 20], [30, 60], [20, 10]])
    assert np.allclose(
        shapes.scaled(608),
        [[40 * 608 / 1920, 20 * 608 / 1920], [30 * 608 / 960, 60 * 608 / 960], [20 * 608 / 960, 10 * 608 / 960]],
    )


def test_malformed_annotation_line_names_file_line_and_field(tmp_path):
    ann = _visdrone_split(tmp_path / "split", {"a": ["1,2,3,4,1,1,0,0", "1,2,x,4,1,1,0,0"]})
    with pytest.raises(DataFormatError, match=r"annotations/a.txt:2: field 'width': 'x' is not an integer"):
        visdrone_box_shapes(ann)


def test_real_sample_sizes_read_from_images_match_the_estimate(shared_data):
    root = shared_data / "visdrone-sample"
    read = visdrone_box_shapes(root / "annotations", root / "images")
    estimated = visdrone_box_shapes(root / "annotations")
    assert read.sizes_read == 6 and estimated.sizes_estimated == 6
    assert read.frames == estimated.frames == {"1920x1080": 3, "1360x765": 2, "960x540": 1}
    assert np.array_equal(read.long_side, estimated.long_side)
    assert len(read.wh) == 839 - 15  # SOURCE.md: 839 boxes, 15 of category 0, none of 11


def test_cli_on_a_dataset_folder_prints_json(shared_data, capsys):
    assert (
        main(["anchors", "--data", str(shared_data / "visdrone-sample"), "--n", "6", "--img-size", "416", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["anchors"]) == 6 and out["img_size"] == 416 and out["boxes"] == 824
    assert out["sizes_read"] == 6 and 0.5 < out["mean_iou"] <= 1.0


def test_cli_writes_the_card(tmp_path, shared_data, capsys):
    shutil.copytree(shared_data / "visdrone-sample", tmp_path / "data" / "val")
    card = tmp_path / "card.yaml"
    card.write_text(
        "name: v\nformat: visdrone\nroot: data\nsplits: {val: val}\nclasses: [a, b, c, d, e, f, g, h, i, j]\n"
        "ignore: [0, 11]\nimg_size: 320\n"
    )
    assert main(["anchors", "--data", str(card), "--write"]) == 0
    assert "anchors at 320 px" in capsys.readouterr().out
    data = yaml.safe_load(card.read_text())
    assert len(data["anchors"]) == 9 and data["img_size"] == 320


def test_cli_errors_are_one_line(tmp_path, capsys):
    card = tmp_path / "card.yaml"
    card.write_text("name: v\nformat: visdrone\nroot: nowhere\nsplits: {val: val}\nclasses: [a]\n")
    assert main(["anchors", "--data", str(card)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"detprune: error: {card}: split 'val': annotation folder {tmp_path}/nowhere/val/annotations "
        "does not exist (set --root?)"
    )


def test_the_visdrone_card_holds_anchors_from_the_real_val_annotations(shared_data):
    """The stored anchors are what `detprune anchors` computes from the full val split (548 files)."""
    from conftest import REPO
    from detprune.cli.anchors import run  # noqa: F401  (the command that wrote them)

    card = yaml.safe_load((REPO / "datasets" / "visdrone.yaml").read_text())
    shapes = visdrone_box_shapes(shared_data / "visdrone-annotations" / "VisDrone2019-DET-val" / "annotations")
    anchors, _ = kmeans_anchors(shapes.scaled(card["img_size"]), n=9, seed=0)
    assert card["anchors"] == format_anchors(anchors)

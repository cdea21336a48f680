"""Dataset cards, layout detection, COCO JSON and image-folder datasets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO
from detprune.data import build_dataset, load_card, make_loader
from detprune.data.synthetic import DEFAULT_SPEC, GENERATOR_VERSION
from detprune.errors import DataFormatError

CARD = """\
name: tiny
format: visdrone
root: data
splits:
  val: val
classes: [a, b]
ignore: [0, 11]
"""


def _card(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "card.yaml"
    p.write_text(text)
    return p


def test_repository_cards_parse():
    for name in ("visdrone", "coco", "cifar10", "hit-uav"):
        card = load_card(REPO / "datasets" / f"{name}.yaml")
        assert card.name == name and card.classes
    vis = load_card(REPO / "datasets" / "visdrone.yaml")
    assert vis.category_ids == list(range(1, 11)) and vis.ignore == (0, 11) and vis.img_size == 608
    assert load_card(REPO / "datasets" / "coco.yaml").num_classes == 80
    assert load_card(REPO / "datasets" / "hit-uav.yaml").category_ids == [1, 3, 4]


def test_synthetic_card_matches_the_generator_default():
    data = yaml.safe_load((REPO / "datasets" / "synthetic.yaml").read_text())
    assert data["generate"] == DEFAULT_SPEC
    assert data["root"].endswith(f"synthetic-v{GENERATOR_VERSION}")


def test_root_is_relative_to_the_card_and_env_expands(tmp_path, monkeypatch):
    assert load_card(_card(tmp_path, CARD)).root == tmp_path / "data"
    monkeypatch.setenv("TINY_ROOT", str(tmp_path / "elsewhere"))
    card = load_card(_card(tmp_path, CARD.replace("root: data", "root: ${TINY_ROOT:-/nope}")))
    assert card.root == tmp_path / "elsewhere"
    monkeypatch.delenv("TINY_ROOT")
    assert load_card(_card(tmp_path, CARD.replace("root: data", "root: ${TINY_ROOT:-/nope}"))).root == Path("/nope")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("format: visdrone", "format: voc", ":2: field 'format': 'voc' is not one of visdrone, coco, imagefolder"),
        ("classes: [a, b]", "classes: []", ":6: field 'classes': must be a non-empty list"),
        ("classes: [a, b]", "classes: [a, a]", ":6: field 'classes': class names repeat"),
        ("ignore: [0, 11]", "ignore: zero", ":7: field 'ignore': must be a list of category ids"),
        ("name: tiny\n", "", ": field 'name' is missing"),
        (
            "format: visdrone",
            "format: visdrone\ntask: classification",
            ":3: field 'task': 'classification' does not match",
        ),
    ],
)
def test_card_errors_name_file_line_and_field(tmp_path, old, new, message):
    p = _card(tmp_path, CARD.replace(old, new))
    with pytest.raises(DataFormatError) as err:
        load_card(p)
    assert str(err.value).startswith(str(p) + message)


def test_bad_yaml_and_missing_card(tmp_path):
    with pytest.raises(DataFormatError, match=r"card\.yaml:2: not valid YAML"):
        load_card(_card(tmp_path, "name: x\n  bad: [\n"))
    with pytest.raises(DataFormatError, match="no such dataset card or folder"):
        load_card(tmp_path / "nothing.yaml")


def test_unknown_keys_are_kept_for_plugins(tmp_path):
    card = load_card(_card(tmp_path, CARD + "anchors: [[10, 13], [16, 30]]\n"))
    assert card.extra == {"anchors": [[10, 13], [16, 30]]}


def test_split_resolution(tmp_path):
    card = load_card(_card(tmp_path, CARD.replace("  val: val", "  VisDrone2019-DET-val: v\n  train: t")))
    assert card.resolve_split("val") == "VisDrone2019-DET-val" and card.resolve_split("train") == "train"
    with pytest.raises(
        DataFormatError, match=r"field 'splits': no split 'test'; this dataset has: VisDrone2019-DET-val, train"
    ):
        card.resolve_split("test")


def test_unknown_folder_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataFormatError, match="cannot tell the dataset layout"):
        load_card(tmp_path)


def test_coco128_through_a_folder(shared_data):
    card = load_card(shared_data / "coco128")
    assert card.format == "coco" and list(card.splits) == ["train2017"] and card.num_classes == 80
    ds = build_dataset(card, img_size=320)
    raw = json.loads((shared_data / "coco128/annotations/instances_train2017.json").read_text())
    crowd = sum(a["iscrowd"] for a in raw["annotations"])
    assert len(ds) == 128 and ds.report.lines == len(raw["annotations"]) == 939
    assert ds.report.ignored_regions == crowd == 10 and ds.report.boxes == 929
    gt = ds.coco_gt()
    assert set(gt.getImgIds()) == {im["id"] for im in raw["images"]}
    images, targets, metas = next(iter(make_loader(ds, batch_size=4)))
    assert images.shape == (4, 3, 320, 320) and len(targets) == 4
    assert all(((t["labels"] >= 0) & (t["labels"] < 80)).all() for t in targets)


def test_coco_json_errors_name_the_entry(tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.jpg"), np.zeros((20, 30, 3), np.uint8))
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
        "categories": [{"id": 5, "name": "thing"}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 5, "bbox": [1, 2, "3", 4], "iscrowd": 0}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    from detprune.data.coco import CocoDataset

    with pytest.raises(DataFormatError) as err:
        CocoDataset(tmp_path / "imgs", ann)
    assert str(err.value) == f"{ann}: annotations[0] (id 7): field 'bbox': [1, 2, '3', 4] is not [x, y, width, height]"
    data["annotations"][0]["bbox"] = [1, 2, 0, 4]
    ann.write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "imgs", ann)
    assert ds.report.dropped_zero_size == [f"{ann}: annotations[0] (id 7)"] and ds.category_ids == [5]


def test_cifar_sample_image_folders(shared_data):
    card = load_card(shared_data / "cifar10-sample")
    assert card.task == "classification" and set(card.splits) == {"train", "test"}
    assert card.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ds = build_dataset(card, split="train", train=True)
    assert len(ds) == 5000 and ds.num_classes == 10
    images, labels = next(iter(make_loader(ds, batch_size=16, shuffle=True)))
    assert images.shape == (16, 3, 32, 32) and str(labels.dtype) == "torch.int64"


def test_image_folder_class_mismatch_is_an_error(tmp_path):
    for c in ("cat", "dog", "eel"):
        (tmp_path / "train" / c).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "train" / c / "0.png"), np.zeros((8, 8, 3), np.uint8))
    p = _card(tmp_path, "name: pets\nformat: imagefolder\nroot: .\nsplits: {train: train}\nclasses: [cat, dog, fox]\n")
    with pytest.raises(
        DataFormatError, match=r"class folders do not match the classes; missing: \['fox'\]; not a class: \['eel'\]"
    ):
        build_dataset(p, split="train")


def test_hit_uav_card_maps_categories_to_three_classes(shared_data):
    ds = build_dataset(REPO / "datasets" / "hit-uav.yaml", split="val")
    assert ds.classes == ["pedestrian", "bicycle", "car"] and ds.category_ids == [1, 3, 4]
    labels = np.concatenate([r.labels for r in ds.records])
    assert np.bincount(labels).tolist() == [1168, 554, 719]  # Person, Bicycle, Car (SOURCE.md)
    assert ds.report.not_targets[11] == 12 and ds.report.ignored_regions == 7  # OtherVehicle, DontCare

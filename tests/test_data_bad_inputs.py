"""Bad dataset inputs end as one DataFormatError line naming file, entry and field - never a
traceback (a 5000-digit integer, a category without id) and never silently wrong data (JSON
``true`` as id 1, two images with one id, a truncated JPEG decoded as a half-gray image)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import pytest

from detprune.cli import main
from detprune.data import build_dataset, load_card
from detprune.data.coco import CocoDataset
from detprune.data.images import is_image, read_image, truncation
from detprune.data.predictions import read_coco_results
from detprune.data.synthetic import render
from detprune.data.visdrone import VisDroneDataset
from detprune.errors import DataFormatError


def _raises(message: str):
    return pytest.raises(DataFormatError, match="^" + re.escape(message) + "$")


def _encoded(path: Path) -> bytes:
    """A small real-looking image in the format of ``path`` (a uniform one is mostly header, useless to cut)."""
    img, _ = render(0, 0, (128, 96))
    data = cv2.imencode(path.suffix, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _visdrone(root: Path, line: str) -> Path:
    """``root/images/a.jpg`` (128x96) with ``root/annotations/a.txt`` holding ``line``."""
    _encoded(root / "images" / "a.jpg")
    (root / "annotations").mkdir()
    (root / "annotations" / "a.txt").write_text(line + "\n")
    return root


def _coco(root: Path, **changes) -> Path:
    """A one-image COCO folder (``annotations/instances_val.json`` + ``val/a.jpg``); returns the JSON."""
    data = {
        "images": [{"id": 25, "file_name": "a.jpg", "height": 96, "width": 128}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 7, "image_id": 25, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}],
    }
    data.update(changes)
    _encoded(root / "val" / "a.jpg")
    ann = root / "annotations" / "instances_val.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(data))
    return ann


def test_visdrone_5000_digit_integer(tmp_path, capsys):
    root = _visdrone(tmp_path, "1" * 5000 + ",1,5,5,1,1,0,0")
    message = "annotations/a.txt:1: field 'left': integer has 5000 digits (too large)"
    with _raises(message):
        VisDroneDataset(root)
    assert main(["data", "check", "--data", str(root)]) == 2  # the CLI prints the one line
    assert capsys.readouterr().err == f"detprune: error: {message}\n"


def test_visdrone_value_over_int64_is_not_called_outside_the_image(tmp_path):
    root = _visdrone(tmp_path, f"1,1,{2**63},5,1,1,0,0")
    with _raises("annotations/a.txt:1: field 'width': 9223372036854775808 is too large for a 64-bit integer"):
        VisDroneDataset(root)


@pytest.mark.parametrize(
    "category, message",
    [
        ({"name": "car"}, "categories[0]: field 'id': missing"),
        ({"id": 3}, "categories[0]: field 'name': missing"),
    ],
)
def test_coco_category_without_id_or_name(tmp_path, category, message):
    ann = _coco(tmp_path, categories=[category])
    with _raises(f"{ann}: {message}"):
        load_card(tmp_path)  # layout detection reads the categories too (a bare KeyError before)
    with _raises(f"{ann}: {message}"):
        CocoDataset(tmp_path / "val", ann)


def test_coco_duplicate_image_ids(tmp_path):
    image = {"id": 25, "file_name": "a.jpg", "height": 96, "width": 128}
    ann = _coco(tmp_path, images=[image, {**image, "file_name": "b.jpg"}])
    with _raises(f"{ann}: images[1]: field 'id': 25 is also the id of images[0]"):
        build_dataset(tmp_path)


def test_coco_duplicate_category_ids(tmp_path):
    ann = _coco(tmp_path, categories=[{"id": 3, "name": "car"}, {"id": 3, "name": "van"}])
    with _raises(f"{ann}: categories[1]: field 'id': 3 is also the id of categories[0]"):
        CocoDataset(tmp_path / "val", ann)


def test_coco_class_name_of_two_categories(tmp_path):
    ann = _coco(tmp_path, categories=[{"id": 3, "name": "car"}, {"id": 4, "name": "car"}])
    with _raises(
        f"{ann}: field 'categories': class 'car' of the card is the name of categories [3, 4]; "
        "map ids to names in the card's classes instead"
    ):
        CocoDataset(tmp_path / "val", ann, classes=["car"])


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("images", "id", True, "images[0]: field 'id': true is not an integer"),
        ("categories", "id", False, "categories[0]: field 'id': false is not an integer"),
        ("annotations", "id", True, "annotations[0] (id true): field 'id': true is not an integer"),
        ("annotations", "image_id", True, "annotations[0] (id 7): field 'image_id': true is not an integer"),
        ("annotations", "category_id", True, "annotations[0] (id 7): field 'category_id': true is not an integer"),
    ],
)
def test_coco_json_booleans_are_not_ids(tmp_path, section, key, value, message):
    ann = _coco(tmp_path)
    data = json.loads(ann.read_text())
    data[section][0][key] = value
    ann.write_text(json.dumps(data))
    with _raises(f"{ann}: {message}"):
        CocoDataset(tmp_path / "val", ann)


def test_coco_json_5000_digit_integer_names_line_and_field(tmp_path):
    ann = _coco(tmp_path)
    ann.write_text(ann.read_text().replace('"id": 25', '"id":\n' + "1" * 5000))
    with _raises(f"{ann}:2: field 'id': integer has 5000 digits (too large)"):
        CocoDataset(tmp_path / "val", ann)


def test_card_integers_too_long_or_boolean(tmp_path):
    card = tmp_path / "card.yaml"
    base = "name: t\nformat: visdrone\nroot: .\nsplits: {val: .}\nclasses: [a]\n"
    card.write_text(base + "img_size: " + "9" * 5000 + "\n")
    with _raises(f"{card}:6: field 'img_size': integer has 5000 digits (too large)"):
        load_card(card)
    card.write_text(base + "ignore: [0, true]\n")
    with _raises(f"{card}:6: field 'ignore': must be a list of category ids, got [0, True]"):
        load_card(card)


def test_card_generate_spec_is_checked(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text(
        "name: t\nformat: visdrone\nroot: gen\nsplits: {val: val}\nclasses: [a]\n"
        "generate: {seed: 0, size: [true, 64], images: {val: 1}}\n"
    )
    with _raises(f"{card}: field 'generate': size [True, 64] is not [width, height], each 64..8192"):
        load_card(card)


def test_predictions_boolean_image_id(tmp_path):
    _coco(tmp_path)
    ds = build_dataset(tmp_path, split="val")
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"image_id": True, "category_id": 3, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    with _raises(f"{pred}: [0]: field 'image_id': true is not an image of the dataset"):
        read_coco_results(pred, ds)


def test_truncated_jpeg_and_png_are_refused(tmp_path):
    path = tmp_path / "a.jpg"
    data = _encoded(path)
    path.write_bytes(data + b"\x00\x00\r\n")  # padding after the end marker is fine
    assert read_image(path).shape == (96, 128, 3)
    path.write_bytes(data[: len(data) // 2])
    with _raises(f"{path}: image is truncated or corrupt (JPEG data does not end with the end-of-image marker FF D9)"):
        read_image(path)
    png = tmp_path / "b.png"
    png.write_bytes(_encoded(png)[:-12])  # without the IEND chunk
    with _raises(f"{png}: image is truncated or corrupt (PNG data does not end with the IEND chunk)"):
        read_image(png)


def test_truncated_image_fails_the_dataset_check(tmp_path):
    root = _visdrone(tmp_path, "1,1,5,5,1,1,0,0")
    data = (root / "images" / "a.jpg").read_bytes()
    (root / "images" / "a.jpg").write_bytes(data[: len(data) // 2])
    with _raises(
        "images/a.jpg: image is truncated or corrupt (JPEG data does not end with the end-of-image marker FF D9)"
    ):
        VisDroneDataset(root)


@pytest.mark.parametrize(
    "name", ["visdrone-sample", "coco128", "cifar10-sample", "hit-uav-thermal", "aerial-cars-drone"]
)
def test_real_sample_images_pass_the_truncation_check(shared_data, name):
    paths = sorted(p for p in (shared_data / name).rglob("*") if p.is_file() and is_image(p))
    assert paths
    for p in paths:  # the check on every file (cheap), a full decode on a spread of them
        data = p.read_bytes()
        assert truncation(data[:16], data[-4096:], len(data)) is None, p
    for p in paths[:: max(1, len(paths) // 40)]:
        assert read_image(p).ndim == 3

"""VisDrone annotation parsing: exact errors, real quirks, and counts of the official files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from detprune.data import build_dataset, load_card
from detprune.data.report import DataReport
from detprune.data.visdrone import VisDroneDataset
from detprune.data.visdrone_parse import parse_annotation_text, read_annotation_file
from detprune.errors import DataFormatError

NAME = "annotations/0000001_02999_d_0000005.txt"


def parse(text, **kw):
    return parse_annotation_text(text, NAME, **kw)


def test_parses_fields_in_order():
    rows = parse("871,572,54,92,1,4,0,1\n948,592,62,92,0,0,1,2\n")
    assert rows.tolist() == [[871, 572, 54, 92, 1, 4, 0, 1], [948, 592, 62, 92, 0, 0, 1, 2]]
    assert rows.dtype == np.int64


def test_trailing_comma_lines_parse():
    rows = parse("440,541,271,152,1,6,0,0,\n436,772,134,72,1,5,0,0,\n")
    assert rows.tolist() == [[440, 541, 271, 152, 1, 6, 0, 0], [436, 772, 134, 72, 1, 5, 0, 0]]


def test_zero_height_box_is_dropped_and_counted():
    rep = DataReport()
    rows = parse("1,2,3,4,1,1,0,0\n611,158,4,0,1,4,0,0\n", report=rep)
    assert rows.tolist() == [[1, 2, 3, 4, 1, 1, 0, 0]]
    assert rep.dropped_zero_size == [f"{NAME}:2"]
    assert "dropped zero-size boxes: 1" in rep.summary()


@pytest.mark.parametrize(
    "line, message",
    [
        ("1,2,3,4,1,12,0,0", "field 'category': 12 is outside 0..11"),
        ("1,2,3,4,1,-1,0,0", "field 'category': -1 is outside 0..11"),
        (
            "1,2,3,4,1,4,0",
            "expected 8 comma-separated fields (left,top,width,height,score,category,truncation,occlusion), got 7",
        ),
        (
            "1,2,3,4,1,4,0,0,0",
            "expected 8 comma-separated fields (left,top,width,height,score,category,truncation,occlusion), got 9",
        ),
        ("1,2,3.5,4,1,4,0,0", "field 'width': '3.5' is not an integer"),
        ("1,2,3,x,1,4,0,0", "field 'height': 'x' is not an integer"),
        ("1,2,-3,4,1,4,0,0", "field 'width': -3 is negative"),
        ("1,2,3,-4,1,4,0,0", "field 'height': -4 is negative"),
        ("-1,2,3,4,1,4,0,0", "field 'left': -1 is outside the image (negative)"),
        ("1,2,3,4,2,4,0,0", "field 'score': 2 is outside 0..1"),
        ("1,2,3,4,1,4,2,0", "field 'truncation': 2 is outside 0..1"),
        ("1,2,3,4,1,4,0,3", "field 'occlusion': 3 is outside 0..2"),
    ],
)
def test_malformed_line_names_file_line_and_field(line, message):
    text = "871,572,54,92,1,4,0,1\n" * 16 + line + "\n"
    with pytest.raises(DataFormatError) as err:
        parse(text)
    assert str(err.value) == f"{NAME}:17: {message}"


def test_box_outside_image_needs_image_size():
    assert len(parse("1900,10,30,10,1,4,0,0")) == 1  # size unknown: cannot tell
    with pytest.raises(DataFormatError) as err:
        parse("1900,10,30,10,1,4,0,0", image_size=(1080, 1920))
    assert str(err.value) == f"{NAME}:1: field 'width': box right edge 1900+30=1930 is outside the image width 1920"
    with pytest.raises(DataFormatError, match=r":1: field 'height': box bottom edge 1070\+20=1090 is outside"):
        parse("10,1070,30,20,1,4,0,0", image_size=(1080, 1920))


def test_lenient_skips_and_lists_bad_lines():
    rep = DataReport()
    rows = parse("1,2,3,4,1,4,0,0\n1,2,3,4,1,99,0,0\nbad\n5,6,7,8,1,1,0,0\n", lenient=True, report=rep)
    assert rows[:, 0].tolist() == [1, 5]
    assert rep.skipped == [
        f"{NAME}:2: field 'category': 99 is outside 0..11",
        f"{NAME}:3: expected 8 comma-separated fields (left,top,width,height,score,category,"
        "truncation,occlusion), got 1",
    ]


def test_crlf_and_blank_lines_keep_line_numbers(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"1,2,3,4,1,4,0,0\r\n\r\n1,2,3,4,1,44,0,0\r\n")
    with pytest.raises(DataFormatError, match=r"a\.txt:3: field 'category': 44"):
        read_annotation_file(p, "a.txt")


def test_non_utf8_file_is_a_format_error(tmp_path):
    p = tmp_path / "b.txt"
    p.write_bytes(b"1,2,3,4,1,4,0,0\n\xff\xfe,1\n")
    with pytest.raises(DataFormatError, match=r"^b\.txt:2: not UTF-8 text"):
        read_annotation_file(p, "b.txt")


# ---- datasets on disk ----------------------------------------------------------------------
def _write_split(root: Path, files: dict[str, str], size=(60, 80), images=True, ext=".jpg"):
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for stem, text in files.items():
        (root / "annotations" / f"{stem}.txt").write_text(text)
        if images:
            cv2.imwrite(str(root / "images" / f"{stem}{ext}"), np.full((*size, 3), 90, np.uint8))


def test_dataset_errors_name_the_file_relative_to_the_split(tmp_path):
    _write_split(tmp_path, {"a": "1,2,3,4,1,4,0,0\n", "b": "1,2,3,4,1,4,0,0\n70,2,30,4,1,4,0,0\n"})
    with pytest.raises(DataFormatError) as err:
        VisDroneDataset(tmp_path)
    assert (
        str(err.value) == "annotations/b.txt:2: field 'width': box right edge 70+30=100 is outside the image width 80"
    )


def test_missing_image_and_missing_annotation_are_named(tmp_path):
    _write_split(tmp_path, {"a": "1,2,3,4,1,4,0,0\n"})
    (tmp_path / "annotations" / "orphan.txt").write_text("1,2,3,4,1,4,0,0\n")
    with pytest.raises(DataFormatError) as err:
        VisDroneDataset(tmp_path)
    assert str(err.value) == "annotations/orphan.txt: no image images/orphan.* for it"
    ds = VisDroneDataset(tmp_path, lenient=True)
    assert len(ds) == 1 and ds.report.skipped_images == ["annotations/orphan.txt: no image images/orphan.* for it"]
    (tmp_path / "annotations" / "orphan.txt").unlink()
    cv2.imwrite(str(tmp_path / "images" / "lonely.png"), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(DataFormatError, match=r"^images/lonely\.png: no annotation file annotations/lonely\.txt$"):
        VisDroneDataset(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    _write_split(tmp_path, {"a": "1,2,3,4,1,4,0,0\n"})
    (tmp_path / "images" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match=r"^images/a\.jpg: cannot read image"):
        VisDroneDataset(tmp_path)


def test_targets_ignored_regions_and_others(tmp_path):
    _write_split(tmp_path, {"a": "1,2,3,4,1,4,0,0\n10,10,20,20,0,0,0,0\n5,5,5,5,0,11,0,0\n30,30,5,5,0,1,0,0\n"})
    ds = VisDroneDataset(tmp_path)
    rec = ds.records[0]
    assert rec.boxes.tolist() == [[1, 2, 4, 6]] and rec.labels.tolist() == [3]
    assert rec.ignore.tolist() == [[10, 10, 30, 30], [30, 30, 35, 35]]
    assert rec.ignore_labels.tolist() == [-1, 0]  # region for every class; score-0 pedestrian for class 0
    assert ds.report.not_targets == Counter({11: 1})
    gt = ds.coco_dict()["annotations"]
    assert sum(a["iscrowd"] for a in gt) == 10 + 1 and sum(1 - a["iscrowd"] for a in gt) == 1


# ---- the real files in ../shared/data ---------------------------------------------------------
def _file_counts(folder: Path) -> tuple[int, Counter]:
    lines, cats = 0, Counter()
    for f in sorted(folder.glob("*.txt")):
        for line in f.read_text().splitlines():
            lines += 1
            cats[int(line.rstrip(",").split(",")[5])] += 1
    return lines, cats


@pytest.mark.parametrize(
    "split, n_files, n_boxes", [("VisDrone2019-DET-val", 548, 40169), ("VisDrone2019-DET-test-dev", 1610, 77547)]
)
def test_official_val_and_test_dev_counts_match_the_files(shared_data, split, n_files, n_boxes):
    folder = shared_data / "visdrone-annotations" / split
    ds = VisDroneDataset(folder)  # annotations only: nothing dropped, nothing malformed
    lines, cats = _file_counts(folder / "annotations")
    rep = ds.report
    assert (len(ds), rep.files, rep.lines) == (n_files, n_files, n_boxes) == (n_files, n_files, lines)
    assert rep.categories == cats
    assert rep.boxes == sum(v for k, v in cats.items() if 1 <= k <= 10)
    assert rep.ignored_regions == cats[0] and rep.not_targets == Counter({11: cats[11]})
    assert not rep.dropped_zero_size and not rep.skipped
    assert sum(len(r.boxes) for r in ds.records) == rep.boxes


def test_official_train_oddities(shared_data):
    ds = build_dataset(load_card(shared_data / "visdrone-annotations"), split="train")
    rep = ds.report
    assert sorted(rep.dropped_zero_size) == [
        "VisDrone2019-DET-train/annotations/0000293_03401_d_0000939.txt:130",
        "VisDrone2019-DET-train/annotations/9999985_00000_d_0000020.txt:12",
        "VisDrone2019-DET-train/annotations/9999999_00590_d_0000267.txt:89",
    ]
    comma = next(r for r in ds.records if r.path.stem == "9999974_00000_d_0000053")
    assert len(comma.boxes) + len(comma.ignore) == 34  # all 34 trailing-comma lines parsed
    assert rep.lines == 303 and rep.boxes + rep.ignored_regions + sum(rep.not_targets.values()) == 300


def test_visdrone_sample_with_images(shared_data):
    ds = build_dataset(load_card(shared_data / "visdrone-sample"), img_size=608)
    rep = ds.report
    assert len(ds) == 6 and rep.lines == 839
    assert rep.categories == Counter({0: 15, 1: 228, 2: 259, 3: 20, 4: 73, 5: 15, 6: 4, 7: 36, 8: 29, 9: 1, 10: 159})
    sizes = {r.path.name: r.size for r in ds.records}
    assert sizes["0000364_01765_d_0000782.jpg"] == (540, 960) and sizes["0000068_00001_d_0000001.jpg"] == (765, 1360)
    image, target, meta = ds[0]
    assert image.shape == (3, 608, 608) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert len(target["boxes"]) == len(ds.records[0].boxes) and target["boxes"].shape[1] == 4
    assert meta["orig_size"] == (1080, 1920) and meta["pad"] == (0.0, 133.0)


def test_uppercase_jpg_images_are_found(shared_data):
    ds = build_dataset(load_card(shared_data / "aerial-cars-drone"), img_size=256)
    names = {r.path.name for r in ds.records}
    assert len(ds) == 57 and ds.report.boxes == 1004
    assert {"DJI_0010.JPG", "DJI_0031.JPG"} <= names
    big = next(i for i, r in enumerate(ds.records) if r.path.name == "DJI_0010.JPG")
    assert ds.records[big].size == (2250, 4000) and ds[big][0].shape == (3, 256, 256)


def test_grayscale_thermal_images_and_empty_files(shared_data):
    ds = build_dataset(load_card(shared_data / "hit-uav-thermal"), split="val", img_size=320)
    assert len(ds) == 290 and ds.report.lines == 2460
    ann = shared_data / "hit-uav-thermal" / "val" / "annotations"
    empty = [i for i, r in enumerate(ds.records) if (ann / f"{r.path.stem}.txt").stat().st_size == 0]
    assert len(empty) == 3 and all(len(ds.records[i].boxes) == len(ds.records[i].ignore) == 0 for i in empty)
    image, target, _ = ds[empty[0]]
    assert image.shape == (3, 320, 320) and target["boxes"].shape == (0, 4)

"""The synthetic drone set: deterministic, valid VisDrone, all classes, cached generation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from detprune.data import build_dataset, load_card, synthetic
from detprune.data.synthetic import card_for, ensure_generated, generate, render
from detprune.data.visdrone import VisDroneDataset
from detprune.errors import DataFormatError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "s", 24, seed=3, progress=False)


def test_render_is_deterministic_per_seed_and_index():
    a, rows_a = render(5, 2)
    b, rows_b = render(5, 2)
    c, rows_c = render(6, 2)
    assert np.array_equal(a, b) and rows_a == rows_b
    assert not np.array_equal(a, c)
    assert a.shape == (384, 512, 3) and a.dtype == np.uint8


def test_generated_files_are_identical_for_a_seed(tmp_path, synth_dir):
    again = generate(tmp_path / "again", 3, seed=3, progress=False)
    for sub in ("annotations", "images"):
        for f in sorted((again / sub).iterdir()):
            assert f.read_bytes() == (synth_dir / sub / f.name).read_bytes(), f.name


def test_loads_strictly_through_the_visdrone_loader(synth_dir):
    ds = VisDroneDataset(synth_dir, img_size=320)  # strict: every line valid, every box inside its image
    rep = ds.report
    assert len(ds) == 24 and not rep.has_losses
    labels = Counter(int(label) for r in ds.records for label in r.labels)
    assert set(labels) == set(range(10))  # all ten classes occur
    assert labels[3] == max(labels.values())  # cars are the most common, as in VisDrone
    assert rep.ignored_regions > 0 and rep.not_targets[11] > 0
    image, target, meta = ds[0]
    assert image.shape == (3, 320, 320) and len(target["boxes"]) == len(ds.records[0].boxes)


def test_objects_are_learnable_sizes_with_occlusion_and_truncation(synth_dir):
    rows = np.concatenate(
        [
            np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.int64)
            for f in sorted((synth_dir / "annotations").glob("*.txt"))
        ]
    )
    objects = rows[(rows[:, 5] >= 1) & (rows[:, 5] <= 10)]
    assert 15 <= len(objects) / 24 <= 45  # dense scenes, like VisDrone
    short_side = np.minimum(objects[:, 2], objects[:, 3])
    long_side = np.maximum(objects[:, 2], objects[:, 3])
    assert np.median(long_side) >= 12 and np.percentile(short_side, 10) >= 4
    by_class = {c: np.median(long_side[objects[:, 5] == c]) for c in range(1, 11)}
    assert by_class[9] > by_class[6] > by_class[5] > by_class[4] > by_class[1]  # bus > truck > van > car > pedestrian
    assert set(objects[:, 7]) >= {0, 1} and 1 in set(objects[:, 6])  # some occluded, some truncated
    assert set(rows[rows[:, 5] == 0, 4]) == {0} and set(rows[rows[:, 5] == 11, 4]) == {0}  # score 0 = ignored


def test_ensure_generated_caches_and_protects_foreign_folders(tmp_path):
    spec = {"seed": 1, "size": [256, 192], "images": {"train": 3, "val": 2}}
    card = card_for(tmp_path / "cache" / "syn", spec)
    ensure_generated(card)
    first = sorted(p.stat().st_mtime_ns for p in (card.root / "train" / "images").iterdir())
    ensure_generated(card)  # second call: nothing rewritten
    assert sorted(p.stat().st_mtime_ns for p in (card.root / "train" / "images").iterdir()) == first
    assert len(build_dataset(card, split="val")) == 2
    changed = card_for(card.root, {**spec, "images": {"train": 4, "val": 2}})
    ensure_generated(changed)  # a different spec regenerates in place
    assert len(list((card.root / "train" / "images").iterdir())) == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("do not delete")
    with pytest.raises(DataFormatError, match="was not made by detprune's generator"):
        ensure_generated(card_for(foreign, spec))
    assert (foreign / "keep.txt").read_text() == "do not delete"


def test_ensure_default_uses_the_cache_env(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "DEFAULT_SPEC", {"seed": 0, "size": [256, 192], "images": {"train": 2, "val": 1}})
    monkeypatch.setenv("DETPRUNE_CACHE", str(tmp_path))
    card = synthetic.ensure_default()
    assert card.root == tmp_path / f"synthetic-v{synthetic.GENERATOR_VERSION}"
    assert card.num_classes == 10 and len(build_dataset(card, split="train")) == 2


def test_card_with_generate_key_makes_its_data(tmp_path):
    p = tmp_path / "syn.yaml"
    p.write_text(
        "name: s\nformat: visdrone\nroot: out\nsplits: {train: train}\n"
        "classes: [pedestrian, people, bicycle, car, van, truck, tricycle, awning-tricycle, bus, motor]\n"
        "generate: {seed: 2, size: [256, 192], images: {train: 2}}\n"
    )
    card = load_card(p)
    assert len(build_dataset(card, split="train")) == 2


@pytest.mark.parametrize("size", [(160, 128), (96, 96), (48, 48)])
def test_small_scenes_render_every_sprite(size):
    """Tiny scenes scale sprites down; every shape must still draw (it once failed in cv2.ellipse)."""
    from detprune.data.synthetic import render

    for i in range(12):
        img, rows = render(2, i, size)
        assert img.shape[:2] == (size[1], size[0])
        for left, top, w, h, *_ in rows:
            assert w > 0 and h > 0 and left >= 0 and top >= 0

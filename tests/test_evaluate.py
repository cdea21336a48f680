"""mAP through pycocotools: exact small cases, ignored regions, agreement with torchmetrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import detprune
from detprune.data import build_dataset, load_card, make_loader
from detprune.data.detection import ALL_CLASSES, DetectionDataset, ImageRecord
from detprune.errors import DataFormatError
from detprune.eval.evaluate import (
    evaluate_classifier,
    evaluate_detections,
    evaluate_model,
)


def _dataset(records, classes=("a", "b")):
    return DetectionDataset(records, list(classes), list(range(1, len(classes) + 1)))


def _rec(image_id, boxes, labels, ignore=(), ignore_labels=(), size=(100, 200)):
    return ImageRecord(
        image_id,
        Path(f"img{image_id}.jpg"),
        size,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(ignore, np.float32).reshape(-1, 4),
        np.asarray(ignore_labels, np.int64),
    )


def _pred(image_id, boxes, scores, labels):
    return {
        "image_id": image_id,
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_hand_computed_average_precision():
    # GT g1, g2; detections by score: TP (g1), FP, TP (g2) -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # 101-point interpolation: recall 0..0.50 (51 points) -> 1, 0.51..1.00 (50 points) -> 2/3.
    ds = _dataset([_rec(1, [[10, 10, 30, 30], [100, 50, 140, 90]], [0, 0])], classes=("a",))
    preds = [_pred(1, [[10, 10, 30, 30], [60, 60, 70, 70], [101, 50, 140, 90]], [0.9, 0.8, 0.7], [0, 0, 0])]
    r = evaluate_detections(preds, ds)
    assert r["map50"] == pytest.approx(253 / 303, abs=1e-12)
    assert r["map50_500"] == pytest.approx(253 / 303, abs=1e-12)
    assert r["per_class"] == {"a": pytest.approx(253 / 303, abs=1e-12)}
    # at IoU >= 0.75 both TPs still match (IoU 1 and 39/40); AP@[.5:.95] equals AP50 up to 0.95 where g2 drops
    assert 0 < r["map"] <= r["map50"]


def test_ground_truth_as_predictions_scores_one():
    recs = [_rec(1, [[10, 10, 30, 30], [50, 5, 90, 40]], [0, 1]), _rec(2, [[0, 0, 200, 100]], [1])]
    ds = _dataset(recs)
    preds = [_pred(r.image_id, r.boxes.tolist(), [1.0] * len(r.boxes), r.labels.tolist()) for r in recs]
    r = evaluate_detections(preds, ds)
    # pycocotools divides by tp + fp + eps: one TP gives 1 - 1e-16
    assert r["map50"] == r["map50_500"] == r["map"] == pytest.approx(1.0, abs=1e-12)
    assert r["per_class"] == {"a": pytest.approx(1.0, abs=1e-12), "b": pytest.approx(1.0, abs=1e-12)}
    assert r["images"] == 2 and r["detections"] == 3


def test_detections_inside_ignored_regions_are_not_false_positives():
    gt = [_rec(1, [[10, 10, 30, 30]], [0], ignore=[[100, 20, 180, 90]], ignore_labels=[ALL_CLASSES])]
    ds = _dataset(gt)
    inside = [[110, 30, 130, 50], [150, 60, 170, 80]]
    half_out = [[150, 20, 210, 40]]  # 30 of its 60 px width inside: inter/area(dt) = 0.5 -> still ignored
    outside = [[20, 60, 60, 95]]
    r = evaluate_detections([_pred(1, inside + [[10, 10, 30, 30]], [0.99, 0.98, 0.5], [1, 0, 0])], ds)
    assert r["per_class"]["a"] == pytest.approx(1.0, abs=1e-12) and r["per_class"]["b"] is None  # no GT of b
    assert r["map50"] == pytest.approx(1.0, abs=1e-12)
    r = evaluate_detections([_pred(1, half_out + [[10, 10, 30, 30]], [0.99, 0.5], [0, 0])], ds)
    assert r["map50"] == pytest.approx(1.0, abs=1e-12)
    r = evaluate_detections([_pred(1, outside + [[10, 10, 30, 30]], [0.99, 0.5], [0, 0])], ds)
    assert r["map50"] == pytest.approx(0.5, abs=1e-12)  # an FP above the TP: precision 1/2 at every recall


def test_a_subset_is_scored_on_its_own_images():
    from torch.utils.data import Subset

    recs = [_rec(1, [[10, 10, 30, 30]], [0]), _rec(2, [[50, 50, 80, 90]], [0])]
    ds = _dataset(recs, classes=("a",))
    preds = [_pred(1, [[10, 10, 30, 30]], [0.9], [0])]
    assert evaluate_detections(preds, ds)["map50"] == pytest.approx(51 / 101, abs=1e-9)  # recall 1/2
    r = evaluate_detections(preds, Subset(ds, [0]))
    assert r["map50"] == pytest.approx(1.0, abs=1e-9) and r["images"] == 1


def test_maxdets_100_versus_500():
    boxes = [[(i % 20) * 10, (i // 20) * 10, (i % 20) * 10 + 8, (i // 20) * 10 + 8] for i in range(150)]
    ds = _dataset([_rec(1, boxes, [0] * 150, size=(100, 200))], classes=("a",))
    r = evaluate_detections([_pred(1, boxes, np.linspace(1, 0.5, 150).tolist(), [0] * 150)], ds)
    assert r["map50_500"] == 1.0
    assert r["map50"] == pytest.approx(sum(1 for k in range(101) if k / 100 <= 100 / 150 + 1e-12) / 101, abs=1e-12)


def test_empty_predictions_and_bad_ids():
    ds = _dataset([_rec(1, [[10, 10, 30, 30]], [0])])
    r = evaluate_detections([], ds)
    assert r["map50"] == 0.0 and r["detections"] == 0
    with pytest.raises(DataFormatError, match="image_id 7 is not an image of the ground truth"):
        evaluate_detections([_pred(7, [[0, 0, 1, 1]], [1.0], [0])], ds)
    with pytest.raises(DataFormatError, match=r"label 5 is outside 0\.\.1"):
        evaluate_detections([_pred(1, [[0, 0, 1, 1]], [1.0], [5])], ds)


def _jittered(ds, seed=0, drop=0.2):
    rng = np.random.default_rng(seed)
    preds = []
    for r in ds.records:
        keep = rng.random(len(r.boxes)) > drop
        b = r.boxes[keep] + rng.normal(0, 3, (int(keep.sum()), 4))
        labels = np.where(
            rng.random(int(keep.sum())) < 0.1, rng.integers(0, ds.num_classes, int(keep.sum())), r.labels[keep]
        )
        fp = rng.uniform(0, 300, (5, 2))
        b = np.concatenate([b, np.concatenate([fp, fp + 20], 1)]).astype(np.float32)
        preds.append(
            {
                "image_id": r.image_id,
                "boxes": torch.from_numpy(b),
                "scores": torch.from_numpy(rng.random(len(b)).astype(np.float32)),
                "labels": torch.from_numpy(np.concatenate([labels, rng.integers(0, ds.num_classes, 5)])),
            }
        )
    return preds


def _torchmetrics(ds, preds, max_dets):
    from torchmetrics.detection import MeanAveragePrecision

    # pycocotools' own thresholds (torchmetrics' defaults are float32 linspaces: 0.51 -> 0.50999999)
    m = MeanAveragePrecision(
        iou_type="bbox",
        backend="pycocotools",
        max_detection_thresholds=[1, 10, max_dets],
        iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
        rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
    )
    m.warn_on_many_detections = False
    targets = []
    for r in ds.records:
        crowd_b, crowd_l = [], []
        for b, label in zip(r.ignore, r.ignore_labels):
            labs = range(ds.num_classes) if label == ALL_CLASSES else [int(label)]
            crowd_b += [b] * len(labs)
            crowd_l += list(labs)
        boxes = np.concatenate([r.boxes, np.asarray(crowd_b, np.float32).reshape(-1, 4)])
        targets.append(
            {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.tensor(r.labels.tolist() + crowd_l),
                "iscrowd": torch.tensor([0] * len(r.boxes) + [1] * len(crowd_l)),
            }
        )
    by_id = {p["image_id"]: p for p in preds}
    m.update([{k: by_id[r.image_id][k] for k in ("boxes", "scores", "labels")} for r in ds.records], targets)
    return m.compute()


def test_agrees_with_torchmetrics_on_real_visdrone(shared_data):
    ds = build_dataset(load_card(shared_data / "visdrone-sample"), img_size=None)
    preds = _jittered(ds)
    ours = evaluate_detections(preds, ds)
    tm100 = _torchmetrics(ds, preds, 100)
    tm500 = _torchmetrics(ds, preds, 500)
    assert 0.2 < ours["map50"] < 0.95
    assert ours["map50"] == pytest.approx(float(tm100["map_50"]), abs=1e-6)
    assert ours["map"] == pytest.approx(float(tm100["map"]), abs=1e-6)
    assert ours["map50_500"] == pytest.approx(float(tm500["map_50"]), abs=1e-6)
    # (tm500["map"] is -1: pycocotools' summarize() hard-codes maxDets=100 for AP@[.5:.95], algorithms.md §8 (b))


def test_agrees_with_torchmetrics_on_coco128_with_crowds(shared_data):
    ds = build_dataset(load_card(shared_data / "coco128"), img_size=None)
    preds = _jittered(ds, seed=1)
    ours = evaluate_detections(preds, ds)
    tm = _torchmetrics(ds, preds, 100)
    assert ours["map50"] == pytest.approx(float(tm["map_50"]), abs=1e-6)
    assert ours["map"] == pytest.approx(float(tm["map"]), abs=1e-6)


def test_real_visdrone_val_ground_truth_scores_one(shared_data):
    ds = build_dataset(load_card(shared_data / "visdrone-annotations"), split="val")
    preds = [
        {"image_id": r.image_id, "boxes": r.boxes, "scores": np.ones(len(r.boxes)), "labels": r.labels}
        for r in ds.records
    ]
    r = evaluate_detections(preds, ds, iou_range=False)
    assert r["map50_500"] == 1.0 and all(v == 1.0 for v in r["per_class_500"].values())
    assert r["map50"] < 1.0  # val has images with more than 100 pedestrians/cars: maxDets 100 truncates
    assert r["images"] == 548 and r["detections"] == 38759


class FakeAdapter:
    """Decodes to the ground truth it is handed: checks evaluate_model's plumbing, not a model."""

    task = "detection"

    def __init__(self, dataset):
        self.ds = dataset
        self.seen = {}

    def decode(self, outputs, metas, conf=0.5, nms_iou=0.5):
        self.seen = {"conf": conf, "nms_iou": nms_iou}
        out = []
        for meta in metas:
            r = self.ds.records[meta["image_id"] - 1]
            n = len(r.boxes)
            out.append(
                {
                    "boxes": torch.from_numpy(r.boxes),
                    "labels": torch.from_numpy(r.labels),
                    "scores": torch.linspace(1.0, 0.05, n) if n else torch.zeros(0),
                }
            )
        return out


def test_evaluate_model_runs_decode_with_thresholds(shared_data):
    ds = build_dataset(load_card(shared_data / "visdrone-sample"), img_size=64)
    model = torch.nn.Conv2d(3, 4, 3)
    adapter = FakeAdapter(ds)
    r = evaluate_model(model, adapter, make_loader(ds, batch_size=3), conf=0.1, nms_iou=0.45, progress=False)
    assert adapter.seen == {"conf": 0.1, "nms_iou": 0.45}
    assert 0.5 < r["map50"] < 1.0  # the lowest-scored boxes fall under conf 0.1
    r = evaluate_model(model, adapter, make_loader(ds, batch_size=3), conf=0.0, progress=False)
    assert r["map50_500"] == 1.0 and r["conf"] == 0.0 and model.training


def test_evaluate_classifier_and_callable_module():
    images = torch.eye(4).repeat_interleave(3, 0).reshape(12, 4, 1, 1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 1])
    loader = list(zip(images.split(5), labels.split(5)))
    model = torch.nn.Flatten()
    assert evaluate_classifier(model, loader, progress=False) == {"top1": 11 / 12, "images": 12}
    assert callable(detprune.eval.evaluate)
    assert detprune.eval.evaluate(model, loader, progress=False)["top1"] == 11 / 12

"""Evaluation speed: detprune's pycocotools scorer vs torchmetrics' MeanAveragePrecision.

    detprune bench evaluate-speed [--root ../shared/data/visdrone-annotations] [--split val]

Scores jittered ground truth of a real VisDrone split (default: the 548 val annotation files,
40k boxes) with both, side by side, and prints seconds and ratios. detprune evaluates only the
``all`` area range (the only one it reports) and reuses the cached GT; ``--iou50`` also shows the
IoU-0.5-only mode used inside training loops.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from detprune.bench.paths import shared_data
from detprune.data import build_dataset, load_card
from detprune.eval.evaluate import evaluate_detections


def jittered(ds, seed=0):
    rng = np.random.default_rng(seed)
    preds = []
    for r in ds.records:
        b = (r.boxes + rng.normal(0, 2, r.boxes.shape)).astype(np.float32)
        preds.append(
            {
                "image_id": r.image_id,
                "boxes": torch.from_numpy(b),
                "scores": torch.from_numpy(rng.random(len(b)).astype(np.float32)),
                "labels": torch.from_numpy(r.labels),
            }
        )
    return preds


def torchmetrics_map(ds, preds):
    from torchmetrics.detection import MeanAveragePrecision

    m = MeanAveragePrecision(iou_type="bbox", backend="pycocotools", max_detection_thresholds=[1, 10, 100])
    m.warn_on_many_detections = False
    targets = []
    for r in ds.records:
        n_ign = len(r.ignore) * ds.num_classes
        boxes = np.concatenate([r.boxes, np.repeat(r.ignore, ds.num_classes, 0)])
        labels = np.concatenate([r.labels, np.tile(np.arange(ds.num_classes), len(r.ignore))])
        targets.append(
            {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels),
                "iscrowd": torch.tensor([0] * len(r.boxes) + [1] * n_ign),
            }
        )
    m.update([{k: p[k] for k in ("boxes", "scores", "labels")} for p in preds], targets)
    return float(m.compute()["map_50"])


def timed(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="detprune bench evaluate-speed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", default=str(shared_data("visdrone-annotations")))
    ap.add_argument("--split", default="val")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    ds = build_dataset(load_card(args.root), split=args.split)
    preds = jittered(ds)
    ds.coco_gt()  # built once per dataset, as in training
    rows = []
    t_tm, m_tm = timed(lambda: torchmetrics_map(ds, preds), args.repeat)
    t_dp, r_dp = timed(lambda: evaluate_detections(preds, ds), args.repeat)
    t_50, r_50 = timed(lambda: evaluate_detections(preds, ds, iou_range=False), args.repeat)
    rows.append(("torchmetrics MeanAveragePrecision (pycocotools)", t_tm, m_tm))
    rows.append(("detprune evaluate_detections", t_dp, r_dp["map50"]))
    rows.append(("detprune evaluate_detections(iou_range=False)", t_50, r_50["map50"]))
    print(f"{len(ds)} images, {sum(len(p['boxes']) for p in preds)} detections, best of {args.repeat}")
    print(f"{'scorer':<50} {'seconds':>8} {'vs torchmetrics':>16} {'mAP@0.5':>9}")
    for name, t, m in rows:
        print(f"{name:<50} {t:8.2f} {t_tm / t:15.2f}x {m:9.4f}")


if __name__ == "__main__":
    main()

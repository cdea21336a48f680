"""``detprune eval``: mAP@0.5 (or top-1) of a model, or of a predictions file, on a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from detprune.cli._values import (
    nonnegative_int,
    positive_float,
    positive_int,
    unit_float,
)
from detprune.errors import DetpruneError

EPILOG = """\
examples:
  detprune eval --predictions results.json --data datasets/visdrone.yaml --split val --json
  detprune eval --predictions results_txt/ --data ../VisDrone2019-DET-val
  detprune eval --model yolov3 --weights pruned.pt --data datasets/visdrone.yaml

Detection numbers are COCO-style (pycocotools, 101-point AP) with VisDrone ignored regions as crowd
boxes in every class and category 11 dropped; map50 uses maxDets 100, map50_500 maxDets 500.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model or a predictions file (mAP@0.5 / top-1)",
        description="Score detections with pycocotools (mAP@0.5 at maxDets 100 and 500, "
        "per-class AP@0.5, AP@[.5:.95]) or a classifier's top-1 accuracy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", required=True, help="dataset card (.yaml) or folder (VisDrone, COCO or image-folder layout)"
    )
    p.add_argument("--split", help="split to score (default: the only split, else val)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="COCO results .json, or a folder of VisDrone result .txt files")
    src.add_argument("--model", help="model adapter name (see `detprune plugins --kind adapter`)")
    p.add_argument(
        "--weights",
        help="pruned recipe (pruned.pt), trainer checkpoint (best.pt, last.pt) or state_dict; "
        "the build arguments a recipe or checkpoint records (classes, width, depth, anchors) are used",
    )
    p.add_argument(
        "--img-size",
        type=positive_int,
        help="network input size (default: the one the weights record, else the card's, else 608 / 32)",
    )
    p.add_argument(
        "--width",
        type=positive_float,
        help="width multiplier, for a plain state_dict (files that record it need no flag)",
    )
    p.add_argument("--depth", type=positive_float, help="depth multiplier, for a plain state_dict")
    p.add_argument(
        "--conf", type=unit_float, default=0.1, help="confidence threshold in [0, 1] (default 0.1, as SlimYOLOv3)"
    )
    p.add_argument("--nms-iou", type=unit_float, default=0.5, help="NMS IoU threshold in [0, 1] (default 0.5)")
    p.add_argument("--max-det", type=positive_int, default=500, help="detections kept per image (default 500)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--lenient", action="store_true", help="skip malformed annotation lines (listed) instead of failing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detprune.data import build_dataset, load_card

    card = load_card(args.data)
    if args.predictions is not None:
        if card.task != "detection":
            raise DetpruneError(f"--predictions scores detections; {card.source} is a {card.task} dataset")
        ds = build_dataset(card, split=args.split, lenient=args.lenient)
        result = _score_predictions(args.predictions, ds)
    else:
        if not args.weights:
            raise DetpruneError("--model needs --weights (a recipe, state_dict or checkpoint file)")
        result = _score_model(args, card)
    _print(result, args.json)
    return 0


def _score_predictions(path: str, ds) -> dict[str, Any]:
    from detprune.data.predictions import read_predictions
    from detprune.eval.evaluate import evaluate_detections

    preds = read_predictions(path, ds)
    result = evaluate_detections(preds.items, ds)
    result["skipped_categories"] = {str(k): v for k, v in sorted(preds.skipped_categories.items())}
    result["images_without_results"] = len(preds.images_without_results)
    if preds.skipped_categories:
        print(
            f"detprune: note: skipped detections in categories that are no class: {result['skipped_categories']}",
            file=sys.stderr,
        )
    if preds.images_without_results:
        print(
            f"detprune: note: {len(preds.images_without_results)} images have no result file and count as "
            f"images without detections (e.g. {preds.images_without_results[0]})",
            file=sys.stderr,
        )
    return result


def _score_model(args: argparse.Namespace, card) -> dict[str, Any]:
    """Load the model as its weights file records it, then score it on the split."""
    from detprune.data import DEFAULT_IMG_SIZE, build_dataset, make_loader
    from detprune.eval.evaluate import evaluate_classifier, evaluate_model
    from detprune.pipeline.weights import open_model
    from detprune.training import distributed as D

    device = D.resolve_device(args.device)  # before any loading: a missing GPU is a one-line error
    loaded = open_model(
        args.model, card, args.weights, img_size=args.img_size, overrides={"width": args.width, "depth": args.depth}
    )
    size = loaded.adapter.args.get("img_size") or card.img_size or DEFAULT_IMG_SIZE[card.task]
    ds = build_dataset(card, split=args.split, img_size=size, lenient=args.lenient)
    model = loaded.model.to(device)
    loader = make_loader(ds, batch_size=args.batch_size, workers=args.workers)
    if card.task == "classification":
        return evaluate_classifier(model, loader, device=device)
    return evaluate_model(
        model, loaded.adapter, loader, conf=args.conf, nms_iou=args.nms_iou, max_det=args.max_det, device=device
    )


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if "top1" in result:
        print(f"top-1 accuracy: {100 * result['top1']:.2f} % on {result['images']} images")
        return
    print(f"{result['protocol']}")
    print(f"images {result['images']}, detections {result['detections']}")
    print(f"mAP@0.5 (maxDets 100)   {result['map50']:.4f}")
    print(f"mAP@0.5 (maxDets 500)   {result['map50_500']:.4f}")
    print(f"mAP@[.5:.95] (100)      {result['map']:.4f}")
    print("per-class AP@0.5 (maxDets 100):")
    for name, ap in result["per_class"].items():
        print(f"  {name:<18} {'-' if ap is None else f'{ap:.4f}'}")

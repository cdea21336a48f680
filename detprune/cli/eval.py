"""``detprune eval``: mAP@0.5 (or top-1) of a model, or of a predictions file, on a dataset."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
    p = sub.add_parser("eval", help="score a model or a predictions file (mAP@0.5 / top-1)",
                       description="Score detections with pycocotools (mAP@0.5 at maxDets 100 and 500, "
                       "per-class AP@0.5, AP@[.5:.95]) or a classifier's top-1 accuracy.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset card (.yaml) or folder (VisDrone, COCO or image-folder layout)")
    p.add_argument("--split", help="split to score (default: the only split, else val)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="COCO results .json, or a folder of VisDrone result .txt files")
    src.add_argument("--model", help="model adapter name (see `detprune plugins --kind adapter`)")
    p.add_argument("--weights", help="pruned recipe file, state_dict, or trainer checkpoint {'model': state_dict}")
    p.add_argument("--img-size", type=int, help="network input size (default: the card's, else 608 / 32)")
    p.add_argument("--conf", type=float, default=0.1, help="confidence threshold (default 0.1, as SlimYOLOv3)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU threshold (default 0.5)")
    p.add_argument("--max-det", type=int, default=500, help="detections kept per image (default 500)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
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
    from detprune.evaluate import evaluate_detections

    preds = read_predictions(path, ds)
    result = evaluate_detections(preds.items, ds)
    result["skipped_categories"] = {str(k): v for k, v in sorted(preds.skipped_categories.items())}
    result["images_without_results"] = len(preds.images_without_results)
    if preds.skipped_categories:
        print(f"detprune: note: skipped detections in categories that are no class: {result['skipped_categories']}",
              file=sys.stderr)
    if preds.images_without_results:
        print(f"detprune: note: {len(preds.images_without_results)} images have no result file and count as "
              f"images without detections (e.g. {preds.images_without_results[0]})", file=sys.stderr)
    return result


def _score_model(args: argparse.Namespace, card) -> dict[str, Any]:
    import torch

    import detprune
    from detprune.data import build_dataset, make_loader
    from detprune.evaluate import evaluate_classifier, evaluate_model

    ds = build_dataset(card, split=args.split, img_size=args.img_size, lenient=args.lenient)
    from detprune.data import DEFAULT_IMG_SIZE

    size = args.img_size or getattr(ds, "img_size", None) or card.img_size or DEFAULT_IMG_SIZE[card.task]
    adapter = detprune.plugins().adapter(args.model, num_classes=card.num_classes, img_size=size)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_weights(args.weights, adapter).to(device)
    loader = make_loader(ds, batch_size=args.batch_size, workers=args.workers)
    if card.task == "classification":
        return evaluate_classifier(model, loader, device=device)
    return evaluate_model(model, adapter, loader, conf=args.conf, nms_iou=args.nms_iou, max_det=args.max_det,
                          device=device)


def load_weights(path: str, adapter):
    """A model from a pruned recipe (``detprune.load``), a state_dict or a ``{'model': state_dict}``."""
    import torch

    import detprune

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DetpruneError(f"{path}: weights file not found") from None
    except Exception:  # noqa: BLE001 - not a plain torch file: let the recipe loader judge it
        obj = None
    state = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    if state is None:
        try:
            loaded = detprune.load(path)
        except (ImportError, AttributeError) as exc:
            raise DetpruneError(f"{path}: not a state_dict or checkpoint, and recipes cannot be read here: {exc}") from None
        return getattr(loaded, "model", loaded)
    model = adapter.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise DetpruneError(f"{path}: weights do not fit model '{_adapter_name(adapter)}' ({first[0] if first else exc}); "
                            "a pruned model needs its recipe file") from None
    return model


def _adapter_name(adapter) -> str:
    return getattr(adapter, "name", type(adapter).__name__)


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

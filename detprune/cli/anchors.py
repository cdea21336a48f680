"""``detprune anchors``: YOLO anchors by k-means (1 - IoU) over a detection dataset's boxes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detprune.errors import DetpruneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "anchors",
        help="compute YOLO anchors by k-means (1 - IoU distance) over a dataset's boxes",
        description="Cluster the ground-truth box shapes of one split with k-means under the 1 - IoU "
        "distance (YOLO9000, section 2), after scaling them to the network input as the letterbox "
        "does. Prints the anchors (pixels at --img-size) and their mean best IoU; --write stores "
        "them under the card's `anchors:` key, to be passed as the yolov3 adapter's `anchors`.",
    )
    p.add_argument("--data", required=True, help="dataset card (datasets/*.yaml) or dataset folder")
    p.add_argument("--root", help="override the card's root folder")
    p.add_argument("--split", help="split whose boxes are clustered (default: the only split, else val)")
    p.add_argument("--n", type=int, default=9, help="number of anchors (default: 9, three per YOLOv3 scale)")
    p.add_argument("--img-size", type=int, help="network input size (default: the card's img_size, else 608)")
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed (default: 0)")
    p.add_argument("--restarts", type=int, default=10, help="k-means restarts, best kept (default: 10)")
    p.add_argument("--write", action="store_true", help="write the anchors into the card's `anchors:` key")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detprune.data.anchors import (
        format_anchors,
        kmeans_anchors,
        visdrone_box_shapes,
        write_card_anchors,
    )
    from detprune.data.cards import load_card

    if args.n < 1:
        raise DetpruneError(f"--n must be at least 1, got {args.n}")
    card = load_card(args.data, root=args.root)
    if card.format != "visdrone":
        raise DetpruneError(
            f"{card.source}: anchors are computed for VisDrone-format cards; this card is {card.format!r}"
        )
    key, folder, ann = card.split_paths(args.split)
    ann = ann or folder / "annotations"
    images = folder / "images" if ann == folder / "annotations" else folder
    if not ann.is_dir():
        raise DetpruneError(f"{card.source}: split {key!r}: annotation folder {ann} does not exist (set --root?)")
    size = args.img_size or card.img_size or 608
    shapes = visdrone_box_shapes(ann, images, ignore=card.ignore)
    anchors, iou = kmeans_anchors(shapes.scaled(size), n=args.n, seed=args.seed, restarts=args.restarts)
    pairs = format_anchors(anchors)
    how = (
        f"{shapes.sizes_read} image sizes read, {shapes.sizes_estimated} estimated from box extents"
        if shapes.sizes_estimated
        else f"{shapes.sizes_read} image sizes read"
    )
    result = {
        "anchors": pairs,
        "mean_iou": round(iou, 4),
        "img_size": size,
        "split": key,
        "boxes": int(len(shapes.wh)),
        "images": shapes.images,
        "sizes_read": shapes.sizes_read,
        "sizes_estimated": shapes.sizes_estimated,
        "frames": shapes.frames,
    }
    if args.write:
        if not Path(args.data).is_file():
            raise DetpruneError(f"--write needs a card file, got the folder {args.data}")
        write_card_anchors(
            Path(args.data),
            pairs,
            f"k-means (1-IoU) anchors at {size} px over {len(shapes.wh)} {key} boxes, "
            f"mean IoU {iou:.3f} (`detprune anchors --write`)",
            size,
        )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{len(shapes.wh)} boxes in {shapes.images} images of split {key!r} ({how}; frames: "
        + ", ".join(f"{k} x{v}" for k, v in sorted(shapes.frames.items()))
        + ")"
    )
    print(f"anchors at {size} px (w,h), small to large: " + "  ".join(f"{w},{h}" for w, h in pairs))
    print(f"mean best IoU: {iou:.4f}")
    if args.write:
        print(f"written to {args.data} (key `anchors`)")
    return 0

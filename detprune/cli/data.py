"""``detprune data synth|check``: make the synthetic drone set; validate a dataset."""

from __future__ import annotations

import argparse
import json
import re

from detprune.errors import DataFormatError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="make the synthetic drone dataset, or check a dataset",
        description="Dataset tools. `synth` writes a VisDrone-format synthetic drone dataset; "
        "`check` reads every annotation of a dataset (card or folder) and reports what it holds "
        "and anything dropped or malformed.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="<action>", required=True)

    s = dsub.add_parser(
        "synth",
        help="write a synthetic VisDrone-format dataset",
        description="Aerial-looking scenes (roads, roofs, trees, ten object classes, ignored "
        "regions) in VisDrone2019-DET format: DIR/images/*.jpg + DIR/annotations/*.txt. "
        "With --val M, DIR/train and DIR/val plus a card DIR/synthetic.yaml. Deterministic per seed.",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--images", type=int, required=True, help="number of images (the train split with --val)")
    s.add_argument("--val", type=int, default=0, help="also write a val split of this many images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", default="512x384", help="image size WxH (default 512x384)")
    s.set_defaults(func=run_synth)

    c = dsub.add_parser(
        "check",
        help="validate a dataset and print its summary",
        description="Parse and validate every annotation file (fields, ranges, boxes inside "
        "their image) and report counts, ignored regions and dropped or skipped boxes.",
    )
    c.add_argument("--data", required=True, help="dataset card (.yaml) or dataset folder")
    c.add_argument("--split", action="append", help="split(s) to check (default: all)")
    c.add_argument("--lenient", action="store_true", help="skip malformed lines and list them instead of failing")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run_check)


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 64 or int(m.group(2)) < 64:
        raise DataFormatError(f"--size: {text!r} is not WxH with both sides >= 64 (e.g. 512x384)")
    return int(m.group(1)), int(m.group(2))


def run_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detprune.data.synthetic import generate

    size = parse_size(args.size)
    if args.images < 1 or args.val < 0:
        raise DataFormatError("--images must be >= 1 and --val >= 0")
    out = Path(args.out)
    if args.val:
        generate(out / "train", args.images, seed=args.seed, size=size)
        generate(out / "val", args.val, seed=args.seed + 1000, size=size)
        (out / "synthetic.yaml").write_text(_card_text(out.name))
        print(f"wrote {args.images} train + {args.val} val images to {out}; card {out / 'synthetic.yaml'}")
    else:
        generate(out, args.images, seed=args.seed, size=size)
        print(f"wrote {args.images} images to {out} (VisDrone layout: images/, annotations/)")
    return 0


def _card_text(name: str) -> str:
    from detprune.data.visdrone_parse import VISDRONE_CLASSES

    return (
        f"name: {name}\ntask: detection\nformat: visdrone\nroot: .\nsplits: {{train: train, val: val}}\n"
        f"classes: [{', '.join(VISDRONE_CLASSES)}]\nignore: [0, 11]\nimg_size: 320\n"
    )


def run_check(args: argparse.Namespace) -> int:
    from detprune.data import build_dataset, load_card

    card = load_card(args.data)
    splits = args.split or list(card.splits)
    out = {"name": card.name, "format": card.format, "task": card.task, "classes": card.classes, "splits": {}}
    for split in splits:
        ds = build_dataset(card, split=split, lenient=args.lenient)
        key = card.resolve_split(split)
        rep = ds.report
        out["splits"][key] = {
            "images": len(ds),
            "target_boxes": rep.boxes,
            "ignored_regions": rep.ignored_regions,
            "not_targets": {str(k): v for k, v in sorted(rep.not_targets.items())},
            "dropped_zero_size": rep.dropped_zero_size,
            "skipped_lines": rep.skipped,
            "skipped_images": rep.skipped_images,
            "summary": rep.summary(),
        }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{card.name}: {card.format} {card.task}, {len(card.classes)} classes")
        for key, info in out["splits"].items():
            print(f"[{key}] " + info["summary"].replace("\n", "\n  "))
    return 0

"""Check an unzipped VisDrone2019-DET download against datasets/visdrone.yaml and summarise it.

    python datasets/prepare_visdrone.py [--root ~/datasets/VisDrone] [--lenient]

Expects VisDrone2019-DET-{train,val,test-dev}/{images,annotations} under the root (the official
zips unpack that way). Every annotation is parsed and validated against its image; the three
zero-height boxes of the official train split are dropped and listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detprune.data import build_dataset, load_card
from detprune.errors import DetpruneError

CARD = Path(__file__).with_name("visdrone.yaml")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="folder holding the unzipped splits (default: the card's root)")
    ap.add_argument("--lenient", action="store_true", help="skip and list malformed lines instead of failing")
    args = ap.parse_args()
    try:
        card = load_card(CARD, root=args.root)
        for split in card.splits:
            folder = card.root / card.splits[split]
            if not folder.is_dir():
                print(f"[{split}] missing: {folder} (unzip {folder.name}.zip under {card.root})")
                continue
            ds = build_dataset(card, split=split, lenient=args.lenient)
            print(f"[{split}] " + ds.report.summary().replace("\n", "\n  "))
    except DetpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write CIFAR-10's python batches as image folders for datasets/cifar10.yaml.

    python datasets/prepare_cifar10.py --src cifar-10-batches-py --out ~/datasets/cifar10

Reads ``data_batch_1..5`` and ``test_batch`` (the official ``cifar-10-python.tar.gz``, unpacked)
and writes lossless PNGs to ``OUT/{train,test}/<class>/NNNNN.png`` in the batches' order.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_batches(src: Path, names: list[str], out: Path) -> int:
    for c in CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    counts = [0] * len(CLASSES)
    for name in names:
        with open(src / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        for img, label in tqdm(zip(images, batch[b"labels"]), total=len(images), desc=name, leave=False):
            cv2.imwrite(str(out / CLASSES[label] / f"{counts[label]:05d}.png"), np.ascontiguousarray(img[..., ::-1]))
            counts[label] += 1
    return sum(counts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, type=Path, help="unpacked cifar-10-batches-py folder")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    missing = [n for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if not (args.src / n).is_file()]
    if missing:
        print(f"error: {args.src}: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    n_train = write_batches(args.src, [f"data_batch_{i}" for i in range(1, 6)], args.out.expanduser() / "train")
    n_test = write_batches(args.src, ["test_batch"], args.out.expanduser() / "test")
    print(f"wrote {n_train} train and {n_test} test images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

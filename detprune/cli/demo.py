"""``detprune demo``: the seed paper's comparison on a CPU in minutes.

On the embedded synthetic VisDrone-format set it trains a small YOLOv3 with Network Slimming's
sparsity term from scratch (Liu et al. 2017, §3.3: "we train with channel sparsity regularization
from scratch"), caches it, then prunes it twice at the same channel ratio with the same fine-tuning
budget: Network Slimming alone (residual streams pruned as one shared group) and Network Slimming
+ Matrix-Sketching compensation (each residual producer keeps its own width, the stream is sketched
to the common one; layers pruned above alpha are compensated). One table: dense / NS / NS+sketch,
with params, FLOPs (2·MAC), latency (median, batch 1, measured side by side) and mAP@0.5 on the
held-out val split.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EPILOG = """\
examples:
  detprune demo                 the full demo (under 15 minutes on a 2-core CPU; faster on a GPU)
  detprune demo --json          the table as one JSON object: {"rows": [{name, params, flops, latency_ms, map50}]}
  detprune demo --quick         a one-minute smoke run (tiny model and budget: mAP near zero)

The sparsity-trained dense model is cached under $DETPRUNE_CACHE/demo (default ~/.cache/detprune);
a second run reuses it (--retrain trains it again). Each arm's run folder (report.md, pruned.pt,
widths.png) is under --out.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main demo: dense vs Network Slimming vs NS + sketch on a small YOLOv3",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with a 'rows' list")
    p.add_argument("--quick", action="store_true", help="tiny model and budget: a smoke run, not a result")
    p.add_argument(
        "--out", default="detprune-demo", help="folder for the two arms' run folders (default ./detprune-demo)"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--retrain", action="store_true", help="train the dense model again instead of using the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detprune.pipeline.demo import FULL, QUICK, run_demo, table

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = QUICK if args.quick else FULL
    result = run_demo(
        cfg,
        out=Path(args.out),
        device=args.device,
        retrain=args.retrain,
        progress=not args.no_progress,
        quick=args.quick,
    )
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0

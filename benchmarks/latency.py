"""``python benchmarks/latency.py ARGS`` = ``detprune bench latency ARGS`` (the code: detprune/bench/latency.py)."""

import sys

from detprune.bench.latency import main

sys.exit(main())

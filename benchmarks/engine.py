"""``python benchmarks/engine.py ARGS`` = ``detprune bench engine ARGS`` (the code: detprune/bench/engine.py)."""

import sys

from detprune.bench.engine import main

sys.exit(main())

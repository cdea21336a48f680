"""``python benchmarks/evaluate_speed.py ARGS`` = ``detprune bench evaluate-speed ARGS``
(the code: detprune/bench/evaluate_speed.py)."""

import sys

from detprune.bench.evaluate_speed import main

sys.exit(main())

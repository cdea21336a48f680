"""``python benchmarks/train_throughput.py ARGS`` = ``detprune bench train-throughput ARGS``
(the code: detprune/bench/train_throughput.py)."""

import sys

from detprune.bench.train_throughput import main

sys.exit(main())

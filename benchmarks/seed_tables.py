"""``python benchmarks/seed_tables.py ARGS`` = ``detprune bench seed-tables ARGS``
(the code: detprune/bench/seed_tables.py)."""

import sys

from detprune.bench.seed_tables import main

sys.exit(main())

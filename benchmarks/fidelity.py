"""``python benchmarks/fidelity.py ARGS`` = ``detprune bench fidelity ARGS``
(the code: detprune/bench/fidelity/runner.py)."""

import sys

from detprune.bench.fidelity.runner import main

sys.exit(main())

"""``python benchmarks/sketch_before_finetune.py ARGS`` = ``detprune bench sketch-before-finetune ARGS``
(the code: detprune/bench/sketch_before_finetune.py)."""

import sys

from detprune.bench.sketch_before_finetune import main

sys.exit(main())

import sys

from detprune.cli import main

sys.exit(main())

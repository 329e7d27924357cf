"""``python -m bnbench``: the ``bnbench`` command, for environments without its script on PATH."""

import sys

from bnbench.cli import main

sys.exit(main())

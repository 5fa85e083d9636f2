"""Run the command line with ``python -m pyro_deq.cli``."""

import sys

from .main import main

sys.exit(main())

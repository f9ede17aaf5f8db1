"""`python -m dfbk.cli`: what torchrun starts for data-parallel training."""

import sys

from dfbk.cli import main

sys.exit(main())

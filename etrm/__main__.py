"""`python -m etrm`, which `torchrun --nproc-per-node N -m etrm experiment1 ...` runs on every rank."""

import sys

from etrm.cli import main

sys.exit(main())

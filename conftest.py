"""Root conftest. The options, markers and verdict table live in the installed
plugin `etrm.testing.plugin` (pytest11 entry point), so that `etrm investigate`
works the same from an installed package as from this checkout."""
import os

# Deterministic, two-thread CPU runs regardless of the host.
os.environ.setdefault("OMP_NUM_THREADS", "1")

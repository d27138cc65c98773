"""Error types shared across etrm's layers, at the bottom of its import graph (imports nothing
from etrm): a lower layer (etrm.testing's artifact options) raises them without importing the
command line above it."""
from __future__ import annotations


class UsageError(ValueError):
    """The command line asks for something that cannot be done (exit status 2)."""

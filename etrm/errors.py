"""Usage errors, shared across etrm's layers and at the bottom of its import graph (imports
nothing from etrm): a lower layer (etrm.testing's artifact options, a command's argparse
types) reports a bad command line without importing the command line above it."""

from __future__ import annotations

import argparse
from collections.abc import Callable


class UsageError(ValueError):
    """The command line asks for something that cannot be done (exit status 2)."""


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in low..high, so that a bad value is a usage error
    (argparse's exit 2, naming the flag) rather than a library ValueError deeper down (exit 1)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"must be in {low}..{high}, got {value}" if high is not None else f"must be at least {low}, got {value}"
            )
        return value

    return parse

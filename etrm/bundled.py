"""Where the bundled fixtures live: the installed package `etrm.fixtures` (the repository's
top-level `fixtures/`, mapped by pyproject), or, when a source checkout runs without being
installed, that `fixtures/` folder beside the `etrm` package."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def fixtures_root() -> Path:
    try:
        return Path(str(importlib.resources.files("etrm.fixtures")))
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parent.parent / "fixtures"
        if (checkout / "__init__.py").is_file():
            return checkout
        raise ModuleNotFoundError(
            f"etrm.fixtures is not installed and {checkout} does not exist: install etrm "
            "(`pip install -e .` in a checkout) to get the bundled fixtures"
        ) from None

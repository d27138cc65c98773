"""etrm: reference TRM/ETRM models, ARC-AGI data and evaluation, and the
investigation suite that checks them (see ../shared/investigation.md)."""

__version__ = "0.4.0"  # the one place: pyproject.toml reads it (dynamic version), etrm --version prints it

from etrm import moved as _moved

_moved.install()

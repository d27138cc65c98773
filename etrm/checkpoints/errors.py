"""Errors and warnings of the checkpoint tools, at the bottom of the package's import graph."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from etrm.checkpoints.pretrained import DecoderLoadReport


class CheckpointError(ValueError):
    """A checkpoint cannot be read or loaded; the message names the file and key at fault."""


class ConfigMismatchError(CheckpointError):
    """A recursion setting of the model differs from the checkpoint's saved config."""


class DecoderLoadError(CheckpointError):
    """Decoder tensors that did not load; `.report` has the full DecoderLoadReport."""

    def __init__(self, message: str, report: "DecoderLoadReport"):
        super().__init__(message)
        self.report = report


class LegacyCheckpointWarning(UserWarning):
    """A legacy (non-zip) checkpoint was loaded whole because it cannot be memory-mapped."""

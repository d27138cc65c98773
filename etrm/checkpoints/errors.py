"""Errors and warnings of the checkpoint tools, at the bottom of the package's import graph:
this module imports nothing from the package (`DecoderLoadError`, which carries a
`DecoderLoadReport`, lives beside it in `pretrained`)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be read or loaded; the message names the file and key at fault."""


class ConfigMismatchError(CheckpointError):
    """A recursion setting of the model differs from the checkpoint's saved config."""


class LegacyCheckpointWarning(UserWarning):
    """A legacy (non-zip) checkpoint was loaded whole because it cannot be memory-mapped."""

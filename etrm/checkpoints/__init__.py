"""Checkpoints (DESIGN.md section 4): safe reading, key layouts, loading a pretrained
decoder into ETRM, our own checkpoints with metadata, EMA provenance, decoder
comparison, and the `etrm inspect` / `etrm verify-decoder` commands.

One module per concept; import graph bottom up: errors, layouts, reading, metadata,
pretrained, native, compare, inspection, commands. This module re-exports the public
names, so `from etrm.checkpoints import load_model` works and `etrm.cli` finds
`add_parser` here.
"""

from etrm.checkpoints.commands import add_parser
from etrm.checkpoints.compare import DecoderComparison, TensorDiff, compare_decoders, decoder_tensors
from etrm.checkpoints.errors import CheckpointError, ConfigMismatchError, LegacyCheckpointWarning
from etrm.checkpoints.inspection import CheckpointInspection, TensorInfo, inspect_checkpoint
from etrm.checkpoints.layouts import (
    DECODER_BUFFERS,
    ENCODER_BUFFERS,
    OFFICIAL_PREFIX,
    act_key,
    classify_key,
    key_layout,
    normalize_key,
    split_prefix,
    unwrap_module,
)
from etrm.checkpoints.metadata import (
    CheckpointMetadata,
    SavedConfig,
    ema_provenance,
    find_saved_config,
    read_metadata,
    recursion_mismatches,
    sidecar_path,
)
from etrm.checkpoints.native import load_checkpoint, load_model, save_checkpoint
from etrm.checkpoints.pretrained import DecoderLoadError, DecoderLoadReport, act_model_of, load_pretrained_decoder
from etrm.checkpoints.reading import count_nonfinite, read_state_dict, tensor_stats

__all__ = [
    "DECODER_BUFFERS",
    "ENCODER_BUFFERS",
    "OFFICIAL_PREFIX",
    "CheckpointError",
    "CheckpointInspection",
    "CheckpointMetadata",
    "ConfigMismatchError",
    "DecoderComparison",
    "DecoderLoadError",
    "DecoderLoadReport",
    "LegacyCheckpointWarning",
    "SavedConfig",
    "TensorDiff",
    "TensorInfo",
    "act_key",
    "act_model_of",
    "add_parser",
    "classify_key",
    "compare_decoders",
    "count_nonfinite",
    "decoder_tensors",
    "ema_provenance",
    "find_saved_config",
    "inspect_checkpoint",
    "key_layout",
    "load_checkpoint",
    "load_model",
    "load_pretrained_decoder",
    "normalize_key",
    "read_metadata",
    "read_state_dict",
    "recursion_mismatches",
    "save_checkpoint",
    "sidecar_path",
    "split_prefix",
    "tensor_stats",
    "unwrap_module",
]

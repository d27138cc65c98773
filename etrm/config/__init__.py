"""Configuration: etrm's typed model config (`model`) and the readers of other people's
files: the official trainer's and the origin's all_config.yaml (`importer`, its key tables in
`trainer_keys`), a config/arch/*.yaml and its CI size (`arch`), and the training recipe
(`training`).

`from etrm.config import ModelConfig` keeps working: the model config's names are
re-exported here. The readers are imported from their own modules."""

from etrm.config.model import (
    ENCODER_TYPES,
    FORWARD_DTYPES,
    MODEL_TYPES,
    NORM_STYLES,
    POOLING_METHODS,
    POS_ENCODINGS,
    ConfigError,
    ModelConfig,
    from_known_keys,
    official_arc1_config,
    tiny_config,
)

__all__ = [
    "ENCODER_TYPES",
    "FORWARD_DTYPES",
    "MODEL_TYPES",
    "NORM_STYLES",
    "POOLING_METHODS",
    "POS_ENCODINGS",
    "ConfigError",
    "ModelConfig",
    "from_known_keys",
    "official_arc1_config",
    "tiny_config",
]

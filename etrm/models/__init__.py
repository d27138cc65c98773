"""TRM, ETRM and ETRMTRM models and the loss head that wraps them."""

from __future__ import annotations

from etrm.config import ModelConfig
from etrm.models.encoders import DemoEncoder, EncoderOutput, VariationalDemoEncoder, build_encoder
from etrm.models.etrm import ETRM, ETRMTRM
from etrm.models.loss import LossHead, stablemax_cross_entropy
from etrm.models.trm import TRM, ACTCarry, ACTModel, InnerCarry, TRMDecoder

MODEL_CLASSES: dict[str, type[ACTModel]] = {"trm": TRM, "etrm": ETRM, "etrmtrm": ETRMTRM}


def build_act_model(config: ModelConfig) -> ACTModel:
    return MODEL_CLASSES[config.model_type](config)


def build_model(config: ModelConfig) -> LossHead:
    """The trainable unit: LossHead(ACT model). Its state_dict has the official layout."""
    return LossHead(build_act_model(config))


__all__ = [
    "ACTCarry",
    "ACTModel",
    "DemoEncoder",
    "ETRM",
    "ETRMTRM",
    "EncoderOutput",
    "InnerCarry",
    "LossHead",
    "MODEL_CLASSES",
    "TRM",
    "TRMDecoder",
    "VariationalDemoEncoder",
    "build_act_model",
    "build_encoder",
    "build_model",
    "stablemax_cross_entropy",
]

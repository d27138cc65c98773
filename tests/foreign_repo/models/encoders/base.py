"""Encoder config and output, under the origin ETRM's names (models/encoders/base.py)."""

from dataclasses import dataclass

import torch


@dataclass
class DemoEncoderConfig:
    hidden_size: int = 512
    num_heads: int = 8
    num_layers: int = 2  # grid-encoder layers
    output_tokens: int = 16  # context tokens (= puzzle_emb_len)
    vocab_size: int = 12
    seq_len: int = 900
    expansion: float = 4.0
    rms_norm_eps: float = 1e-5
    forward_dtype: str = "bfloat16"
    set_encoder_layers: int = 1


@dataclass
class EncoderOutput:
    context: torch.Tensor  # (batch, output_tokens, hidden_size)
    z_pooled: torch.Tensor | None = None  # (batch, hidden_size)
    kl_loss: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None

"""The origin's recurrent encoder for ETRMTRM (models/encoders/recurrent_base.py and
recurrent_standard.py): its state z_e is carried across ACT steps and returned as a
carry, from which the decoder takes the context with `get_context()`. As in the origin,
the returned carry is detached ("to break the computational graph"), so the context
the decoder reads never carries a gradient back to any encoder parameter."""

from dataclasses import dataclass

import torch
from torch import nn

from models.common import trunc_normal_init_
from models.encoders.base import DemoEncoderConfig
from models.encoders.standard import DemoGridEncoder, DemoSetEncoderLayer, demo_attention_bias, encode_demos


@dataclass
class RecurrentEncoderCarry:
    z_e: torch.Tensor  # (batch, output_tokens, hidden_size)

    def get_context(self) -> torch.Tensor:
        return self.z_e


class RecurrentAggregationEncoder(nn.Module):
    """One step: z_e cross-attends to the demo vectors, then an MLP (post-norm)."""

    def __init__(self, config: DemoEncoderConfig):
        super().__init__()
        self.config = config
        self.grid_encoder = DemoGridEncoder(config)
        self.z_e_init = nn.Buffer(
            trunc_normal_init_(
                torch.empty(config.output_tokens, config.hidden_size, dtype=getattr(torch, config.forward_dtype))
            ),
            persistent=True,
        )
        self.cross_attn = DemoSetEncoderLayer(config)

    def initial_carry(self, batch_size: int, device=None) -> RecurrentEncoderCarry:
        return RecurrentEncoderCarry(z_e=self.z_e_init.unsqueeze(0).expand(batch_size, -1, -1).clone().to(device))

    def reset_carry(self, needs_reset: torch.Tensor, carry: RecurrentEncoderCarry) -> RecurrentEncoderCarry:
        return RecurrentEncoderCarry(z_e=torch.where(needs_reset.view(-1, 1, 1), self.z_e_init.unsqueeze(0), carry.z_e))

    def forward(self, carry: RecurrentEncoderCarry, demo_inputs, demo_labels, demo_mask) -> RecurrentEncoderCarry:
        demo_mask = demo_mask.bool()
        encodings = encode_demos(self.grid_encoder, demo_inputs, demo_labels, demo_mask)
        z_e = self.cross_attn(carry.z_e.to(encodings.dtype), encodings, demo_attention_bias(demo_mask, encodings.dtype))
        # The origin's smoothing, then its detach: the decoder's context has no graph to the encoder.
        return RecurrentEncoderCarry(z_e=(0.9 * carry.z_e.detach() + 0.1 * z_e).detach())

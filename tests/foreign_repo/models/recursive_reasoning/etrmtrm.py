"""TRMWithRecurrentEncoder as in the origin's models/recursive_reasoning/etrmtrm.py: the
encoder has a carry of its own, stepped once per ACT step; the decoder's context is
`encoder_carry.get_context()`. The origin's encoder returns that carry detached, so no
encoder parameter ever gets a gradient: the bug H2 must find in this code."""

from dataclasses import dataclass

import torch

from models.encoders.recurrent_standard import RecurrentAggregationEncoder, RecurrentEncoderCarry
from models.recursive_reasoning.etrm import TRMEncoderCarry, TRMEncoderConfig, TRMEncoderInnerCarry, TRMWithEncoder


@dataclass
class ETRMTRMCarry:
    encoder_carry: RecurrentEncoderCarry
    inner_carry: TRMEncoderInnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


@dataclass
class ETRMTRMConfig(TRMEncoderConfig):
    recurrent_encoder_type: str = "recurrent_standard"
    encoder_h_cycles: int = 3  # used by the origin's trm_style encoder only
    encoder_l_cycles: int = 1
    encoder_l_layers: int = 2


class TRMWithRecurrentEncoder(TRMWithEncoder):
    config_class = ETRMTRMConfig
    encoder_classes = {"standard": RecurrentAggregationEncoder}

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ETRMTRMCarry:
        base: TRMEncoderCarry = super().initial_carry(batch)
        return ETRMTRMCarry(
            encoder_carry=self.encoder.initial_carry(batch["inputs"].shape[0], batch["inputs"].device),
            inner_carry=base.inner_carry,
            steps=base.steps,
            halted=base.halted,
            current_data=base.current_data,
        )

    def encode(self, carry: ETRMTRMCarry, data, needs_reset):
        encoder_carry = self.encoder.reset_carry(needs_reset, carry.encoder_carry)
        encoder_carry = self.encoder(encoder_carry, data["demo_inputs"], data["demo_labels"], data["demo_mask"])
        return encoder_carry.get_context(), {}, encoder_carry

    def next_carry(self, inner_carry, steps, halted, data, encoder_state):
        return ETRMTRMCarry(
            encoder_carry=encoder_state, inner_carry=inner_carry, steps=steps, halted=halted, current_data=data
        )

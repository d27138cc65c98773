"""Unit tests of helpers the hypothesis checks rely on."""

import pytest
import torch

from etrm.checks.h3_encoder_output import prefix_rms


def test_prefix_rms_ignores_the_blank_row_and_zero_tokens():
    weights = torch.zeros(3, 8)
    weights[1, :4] = 2.0  # one trained puzzle, prefix token 0 only (hidden 4, two tokens)
    assert prefix_rms(weights, hidden_size=4) == pytest.approx(2.0)

"""Encoder diagnostics on constructed contexts whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from etrm.diagnostics import DIAGNOSTIC_KEYS, encoder_diagnostics

# identifier -> name: 1, 2 are augmentations of task "a"; 3, 4 of task "b"; 0 is the blank.
NAMES = ["<blank>", "a", "a|||t1|||0123456789", "b", "b|||t4|||0213456789"]


def ids(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def test_identical_contexts_have_no_cross_sample_spread():
    context = torch.randn(1, 3, 8).expand(4, 3, 8)
    stats = encoder_diagnostics(context, ids(1, 2, 3, 4), NAMES)
    assert stats["cross_sample_std"] == 0.0 and stats["within_task_std"] == 0.0
    assert stats["token_std"] > 0


def test_values_on_a_hand_computed_context():
    # Sample 0: every element +1; sample 1: every element -1 (2 tokens of 2 features).
    context = torch.stack([torch.ones(2, 2), -torch.ones(2, 2)])
    stats = encoder_diagnostics(context, ids(1, 3))
    assert stats["output_mean"] == 0.0
    assert stats["output_std"] == pytest.approx(math.sqrt(8 / 7))  # unbiased over 8 elements
    assert stats["output_norm"] == pytest.approx(math.sqrt(2))  # per-token L2 norm
    assert stats["cross_sample_std"] == pytest.approx(math.sqrt(2))  # std of (1, -1)
    assert stats["token_std"] == 0.0  # both tokens of a sample are equal
    assert math.isnan(stats["within_task_std"])  # no identifier names given


def test_within_task_spread_uses_distinct_augmentations_of_each_task():
    per_task = {"a": torch.zeros(2, 4), "b": torch.ones(2, 4)}
    # Task a's two augmentations differ by +-1 on one feature; task b's are identical.
    a1, a2 = per_task["a"].clone(), per_task["a"].clone()
    a1[0, 0], a2[0, 0] = 1.0, -1.0
    context = torch.stack([a1, a2, per_task["b"], per_task["b"], a1])  # the last repeats identifier 1
    stats = encoder_diagnostics(context, ids(1, 2, 3, 4, 1), NAMES)
    # Task a: std sqrt(2) on 1 of 8 elements; task b: 0; the mean over the two tasks.
    assert stats["within_task_std"] == pytest.approx(math.sqrt(2) / 8 / 2)
    assert stats["cross_sample_std"] > stats["within_task_std"]


def test_padding_rows_are_left_out_and_single_samples_give_nan():
    context = torch.stack([torch.full((2, 2), 5.0), torch.full((2, 2), 7.0)])
    stats = encoder_diagnostics(context, ids(0, 1), NAMES)  # row 0 is padding
    assert stats["output_mean"] == 7.0
    assert math.isnan(stats["cross_sample_std"]) and math.isnan(stats["within_task_std"])
    empty = encoder_diagnostics(context, ids(0, 0), NAMES)
    assert set(empty) == set(DIAGNOSTIC_KEYS) and all(math.isnan(v) for v in empty.values())


def test_bad_shapes_and_unknown_identifiers_are_errors():
    with pytest.raises(ValueError, match=r"\(B, P, h\)"):
        encoder_diagnostics(torch.zeros(2, 4), ids(1, 2))
    with pytest.raises(ValueError, match="identifier 9 is outside"):
        encoder_diagnostics(torch.zeros(2, 2, 2), ids(1, 9), NAMES)

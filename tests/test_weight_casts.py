"""One cast of each decoder weight per ACT step (etrm.layers.weight_casts_shared).

The recursion applies each weight H_cycles x (L_cycles + 1) times a step; in bfloat16 each
application used to cast the float32 weight again (5-7% of an official-size inference step).
These tests hold the shared casts to the same numbers as casting every time, and show that a
cast never outlives the step it was made in."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from etrm.config import tiny_config
from etrm.models import build_model
from etrm.synthetic import random_batch


class ParameterCasts(TorchFunctionMode):
    """Counts `Parameter.to(dtype)` calls that change the dtype, per parameter."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and isinstance(args[0], nn.Parameter):
            target = next((a for a in (*args[1:], kwargs.get("dtype")) if isinstance(a, torch.dtype)), None)
            if target is not None and target != args[0].dtype:
                self.counts[id(args[0])] += 1
        return func(*args, **kwargs)


def bf16_decoder(**overrides):
    torch.manual_seed(0)
    head = build_model(tiny_config("trm", forward_dtype="bfloat16", H_cycles=2, L_cycles=2, **overrides))
    inner = head.model.inner
    batch = random_batch(head.config, 2)
    carry = inner.reset_carry(torch.ones(2, dtype=torch.bool), inner.empty_carry(2, "cpu"))
    return inner, carry, batch["inputs"], inner.puzzle_prefix(batch["puzzle_identifiers"])


def test_outside_autograd_each_weight_is_cast_once_a_step_with_the_same_outputs():
    inner, carry, inputs, prefix = bf16_decoder()
    layer_weights = [id(p) for p in inner.L_level.parameters()]
    with torch.no_grad():
        with ParameterCasts() as every_time:
            unshared = inner._recursion(carry, inputs, prefix)  # the recursion without the shared casts
        with ParameterCasts() as once:
            shared = inner(carry, inputs, prefix)
    assert {every_time.counts[i] for i in layer_weights} == {6}  # H_cycles x (L_cycles + 1) applications
    assert {once.counts[i] for i in layer_weights} == {1}
    for a, b in zip((unshared[0].z_H, unshared[0].z_L, *unshared[1:]), (shared[0].z_H, shared[0].z_L, *shared[1:])):
        assert torch.equal(a, b)


def test_in_training_trainable_weights_get_the_same_gradients_and_frozen_ones_share_their_casts():
    inner, carry, inputs, prefix = bf16_decoder()
    grads = []
    for step in (inner._recursion, inner):
        inner.zero_grad()
        _, logits, q_halt, _ = step(carry, inputs, prefix)
        (logits.float().square().mean() + q_halt.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(n.startswith("L_level.") for n in grads[0])
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
        assert grads[1][name].abs().sum() > 0, f"{name} got no gradient"

    inner.L_level.requires_grad_(False)  # a frozen decoder: no gradient to keep, one cast a step
    with ParameterCasts() as casts:
        inner(carry, inputs, prefix)
    assert {casts.counts[id(p)] for p in inner.L_level.parameters()} == {1}


@pytest.mark.parametrize("how", ["optimizer-style", "through .data"])
def test_a_weight_changed_between_steps_is_cast_afresh(how):
    """Editing through `.data` leaves the version counter alone, so a cache keyed on it would
    serve the old cast; the shared casts live for one step only."""
    inner, carry, inputs, prefix = bf16_decoder()
    weight = inner.L_level.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        before = inner(carry, inputs, prefix)[1]
        if how == "optimizer-style":
            weight.add_(0.05)
        else:
            weight.data.add_(0.05)
        after = inner(carry, inputs, prefix)[1]
        expected = inner._recursion(carry, inputs, prefix)[1]
    assert not torch.equal(before, after)
    assert torch.equal(after, expected)

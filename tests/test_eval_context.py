"""In evaluation ETRM encodes each sample's demos once and carries the context
(etrm.models.etrm.ETRM): its outputs must be bit for bit those of re-encoding at every
step, also when halted slots take new samples in the middle of an episode."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from etrm.inference import run_episode
from etrm.models import ETRM
from etrm.suite.support import tiny_model
from etrm.synthetic import random_batch

CACHING = ["etrm-standard", "etrm-variational"]
BATCH = 3
# Slots forced to halt after a step (as a streaming evaluator would replace finished
# samples): mid-episode resets of one slot, of two, then the natural halt at step 3.
FORCED_HALTS = {2: [1], 4: [0, 2]}
STEPS = 7


class StaleContextETRM(ETRM):
    """A broken cache: reuses the carried context even for slots that took a new sample."""

    def prefix(self, data, carry, reset):
        if self.caches_context() and carry.context is not None:
            return carry.context, dict(carry.extras)
        return super().prefix(data, carry, reset)


def count_encoder_calls(head) -> list[int]:
    calls = [0]
    head.model.encoder.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def stream(head, reuse: bool) -> tuple[list[dict[str, torch.Tensor]], int]:
    """STEPS eval calls, a new batch each call (halted slots take its samples), with the
    FORCED_HALTS; per step every output, and how often the encoder ran."""
    head.model.reuse_eval_context = reuse
    calls = count_encoder_calls(head)
    batches = [
        random_batch(head.config, BATCH, seed=i, demo_counts=[1 + (i + j) % 4 for j in range(BATCH)])
        for i in range(STEPS)
    ]
    head.eval()
    steps = []
    with torch.no_grad():
        carry = head.initial_carry(batches[0])
        for i, batch in enumerate(batches, start=1):
            carry, loss, _, outputs, _ = head(carry, batch)
            steps.append({**outputs, "loss": loss, "z_H": carry.inner.z_H})
            if i in FORCED_HALTS:
                halted = carry.halted.clone()
                halted[FORCED_HALTS[i]] = True
                carry = dataclasses.replace(carry, halted=halted)
    return steps, calls[0]


def first_difference(ours: list[dict], expected: list[dict]) -> str | None:
    for i, (a, b) in enumerate(zip(ours, expected), start=1):
        for key in b:
            if not torch.equal(a[key], b[key]):
                return f"step {i} {key}: max |diff| {(a[key].float() - b[key].float()).abs().max().item():.3g}"
    return None


@pytest.fixture(scope="module")
def recomputed():
    return {name: stream(tiny_model(name, halt_max_steps=3), reuse=False) for name in CACHING}


@pytest.mark.parametrize("name", CACHING)
def test_carried_context_gives_the_recomputed_outputs_bit_for_bit(name, recomputed):
    expected, recompute_calls = recomputed[name]
    ours, calls = stream(tiny_model(name, halt_max_steps=3), reuse=True)
    assert first_difference(ours, expected) is None, first_difference(ours, expected)
    assert "context" in expected[0] and ("kl" in expected[0]) == (name == "etrm-variational")
    # New samples enter at steps 1, 3 (forced), 4 (natural halt), 5 (forced) and 6 (natural).
    assert (recompute_calls, calls) == (STEPS, 5)


def test_a_stale_cache_is_caught(recomputed):
    """Negative control: reusing the context of a slot that took a new sample differs."""
    torch.manual_seed(0)
    head = tiny_model("etrm-standard", halt_max_steps=3)
    broken = type(head)(StaleContextETRM(head.config))
    broken.load_state_dict(head.state_dict())
    ours, _ = stream(broken, reuse=True)
    assert (first_difference(ours, recomputed["etrm-standard"][0]) or "").startswith("step 3 ")


def test_an_evaluation_episode_encodes_once():
    head = tiny_model("etrm-standard", halt_max_steps=4)
    calls = count_encoder_calls(head)
    run_episode(head, random_batch(head.config, 2))
    assert calls[0] == 1


@pytest.mark.parametrize(
    "name, train, grad",
    [("etrm-standard", True, True), ("etrm-standard", False, True), ("etrmtrm-standard", False, False)],
    ids=["training", "eval-with-autograd", "etrmtrm"],
)
def test_the_encoder_runs_every_step_where_its_context_may_change_or_needs_gradient(name, train, grad):
    head = tiny_model(name, halt_max_steps=4).train(train)
    calls = count_encoder_calls(head)
    batch = random_batch(head.config, 2)
    with torch.set_grad_enabled(grad):
        carry = head.initial_carry(batch)
        for _ in range(3):
            carry = head(carry, batch)[0]
    assert calls[0] == 3

"""run_episode and evaluate: full eval-mode episodes fed to an evaluator."""

from __future__ import annotations

import pytest
import torch

from etrm.config import tiny_config
from etrm.inference import evaluate, run_episode
from etrm.models import build_model
from etrm.synthetic import random_batch

SMALL = dict(seq_len=16, H_cycles=1, L_cycles=1, max_demos=2, halt_max_steps=3)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return build_model(tiny_config("etrm", **SMALL))


class RecordingEvaluator:
    """Stands in for ArcEvaluator: records the calls evaluate() makes."""

    def __init__(self):
        self.calls: list[str] = []
        self.updates: list[tuple[dict, dict]] = []

    def begin_round(self):
        self.calls.append("begin_round")

    def update(self, batch, outputs):
        self.calls.append("update")
        self.updates.append((batch, outputs))

    def result(self, save_dir=None):
        self.calls.append("result")
        return {"rows": sum(len(b["inputs"]) for b, _ in self.updates), "save_dir": save_dir}


def test_run_episode_runs_exactly_halt_max_steps_in_eval_mode_and_restores_the_mode(head):
    batch = random_batch(head.config, 3, seed=1)
    head.train()
    outputs = run_episode(head, batch)
    assert head.training
    # The same loop by hand, in eval mode.
    head.eval()
    with torch.no_grad():
        carry = head.initial_carry(batch)
        for _ in range(head.config.halt_max_steps):
            carry, _, _, expected, _ = head(carry, batch)
    head.train()
    assert carry.steps.tolist() == [3, 3, 3]
    torch.testing.assert_close(outputs["logits"], expected["logits"])
    assert torch.equal(outputs["preds"], expected["preds"])
    assert outputs["preds"].shape == (3, head.config.seq_len) and outputs["context"].shape[0] == 3
    assert not outputs["logits"].requires_grad


def test_run_episode_fails_loudly_when_eval_halting_is_broken(head, monkeypatch):
    batch = random_batch(head.config, 2, seed=1)
    # An ACT model that never halts in eval mode: patch its halting to "not yet".
    original = head.model.forward

    def never_halt(carry, data):
        carry, outputs = original(carry, data)
        carry.halted = torch.zeros_like(carry.halted)
        return carry, outputs

    monkeypatch.setattr(head.model, "forward", never_halt)
    with pytest.raises(RuntimeError, match="have not halted"):
        run_episode(head, batch)


def test_evaluate_feeds_every_batch_to_a_fresh_round(head):
    batches = [random_batch(head.config, 2, seed=s) for s in range(3)]
    evaluator = RecordingEvaluator()
    result = evaluate(head, batches, evaluator, progress=False, save_dir="out")
    assert evaluator.calls == ["begin_round", "update", "update", "update", "result"]
    assert result == {"rows": 6, "save_dir": "out"}
    for batch, outputs in evaluator.updates:
        assert set(outputs) == {"preds", "q_halt_logits"}
        assert torch.equal(outputs["preds"], run_episode(head, batch)["preds"])


def test_evaluate_stops_after_max_batches_without_drawing_more(head):
    drawn = []

    def stream():
        for s in range(5):
            drawn.append(s)
            yield random_batch(head.config, 2, seed=s)

    evaluator = RecordingEvaluator()
    evaluate(head, stream(), evaluator, progress=False, max_batches=2)
    assert evaluator.calls.count("update") == 2 and drawn == [0, 1]
    with pytest.raises(ValueError, match="max_batches"):
        evaluate(head, [], evaluator, max_batches=0)

"""H7's answer a researcher can trust (etrm.checks.context_search, h7_statistics): a search that
moves from any start, verdicts that rest on a test across tasks, and an encoder run once per
search. Known answers by construction: the bundled steerable decoder (trained with per-task
TRM embeddings) under an encoder whose tensors are zeroed gives one all-zero context for every
task, so the encoder is the bottleneck and no claim that the decoder cannot be steered is true."""

from __future__ import annotations

import math

import pytest
import torch

from etrm.bundled import fixtures_root
from etrm.checkpoints import load_model
from etrm.checks import context_search as search
from etrm.checks import h7_headroom as headroom
from etrm.checks import h7_probes as probes
from etrm.checks import h7_statistics as stats
from etrm.checks.h7_measure import measure_case
from etrm.interface import TRMInterface
from etrm.suite.h7_case import known_case
from etrm.testing.artifacts import BUNDLED

H7 = fixtures_root() / "h7"


def _zeroed(path):
    """A trained ETRM whose encoder tensors are all zero: its context is zero for every task
    (every etrm encoder ends in an RMS norm, and the norm of zero is zero)."""
    head = load_model(path)
    with torch.no_grad():
        for tensor in (*head.model.encoder.parameters(), *head.model.encoder.buffers()):
            tensor.zero_()
    return head


@pytest.fixture(scope="module")
def zero_encoder_case():
    """h7/bottleneck's ETRM (over h7/trm's frozen decoder, which per-task embeddings steer) with a
    zeroed encoder and no TRM checkpoint: only the searched context (b) can show the headroom."""
    head = _zeroed(H7 / "bottleneck" / "step_final")
    return measure_case(
        TRMInterface.from_etrm(head), head.config, H7 / "data" / "fewshot", None, "no TRM checkpoint", tasks=8, steps=8
    )


def test_the_search_moves_from_a_zero_context_and_never_claims_the_decoder_cannot_be_steered(zero_encoder_case):
    m = zero_encoder_case.measurement
    assert all(s.search_lowered for s in m.tasks)  # the step is in the model's units, not the start's
    assert all(s.demo_loss_searched < 0.9 * s.demo_loss_start for s in m.tasks)
    assert m.search_scale == 1.0 and "normalised" in m.search_scale_source
    steer, room = headroom.check_decoder_steerable(m), headroom.check_context_headroom(m)
    assert steer.status != "fail" and headroom.CANNOT_STEER not in steer.message
    assert room.status in ("fail", "inconclusive")  # H7 evidence, or at worst inconclusive
    assert room.numbers["tasks_steered"] >= 1


def test_control_a_step_scaled_by_the_start_never_moves_from_zero(zero_encoder_case, monkeypatch):
    """The old rule (5% of the start's RMS, clamped at 1e-6): from zero it stays put, and then
    the search says nothing, so no absence may be claimed either."""
    monkeypatch.setattr(search, "search_scale", lambda *a, **k: search.SearchScale(1e-6, "the start's RMS"))
    head = _zeroed(H7 / "bottleneck" / "step_final")
    m = measure_case(
        TRMInterface.from_etrm(head), head.config, H7 / "data" / "fewshot", None, "", tasks=5, steps=2
    ).measurement
    assert not any(s.search_lowered for s in m.tasks)
    for result in (headroom.check_decoder_steerable(m), headroom.check_context_headroom(m)):
        assert result.status == "inconclusive" and "did not lower" in result.message, result.message


def test_a_search_that_did_not_move_gives_no_absence_claim(monkeypatch):
    """The context-blind decoder (trained with an all-zero context) is 'cannot be steered' when
    the search moved; with no scale to step at, the same decoder is inconclusive."""
    assert headroom.check_decoder_steerable(known_case("context_blind").measurement).status == "fail"
    monkeypatch.setattr(search, "search_scale", lambda *a, **k: None)
    m = known_case.__wrapped__("context_blind", tasks=5, steps=2).measurement
    assert m.search_scale_source.startswith("no scale") and not any(s.search_lowered for s in m.tasks)
    result = headroom.check_decoder_steerable(m)
    assert result.status == "inconclusive" and "did not lower" in result.message


def test_the_bundled_experiment1_run_with_a_zeroed_encoder_is_not_called_unsteerable():
    """The issue's second case: the bundled frozen ETRM, its encoder tensors zeroed."""
    head = _zeroed(fixtures_root() / BUNDLED["etrm_frozen_checkpoint"])
    m = measure_case(
        TRMInterface.from_etrm(head),
        head.config,
        fixtures_root() / "data" / "fewshot",
        None,
        "",
        tasks=None,
        steps=4,
        require_trained=False,
    ).measurement
    assert m.tasks and any(s.demo_loss_searched != s.demo_loss_start for s in m.tasks)
    assert headroom.check_decoder_steerable(m).status != "fail"


def test_fewer_tasks_than_the_test_can_reach_are_inconclusive_naming_the_count():
    m = known_case("bottleneck", tasks=4).measurement
    assert len(m.tasks) == 4
    for result in (headroom.check_context_headroom(m), headroom.check_decoder_steerable(m)):
        assert result.status == "inconclusive" and "needs at least 5" in result.message, result.message
        assert result.numbers["tasks_needed"] == 5 and result.numbers["p_value"] == pytest.approx(1 / 16)


def test_statistics_come_from_scipy_with_the_documented_level_and_a_seeded_interval():
    assert stats.ALPHA == 0.05 and stats.tasks_needed(0.05) == 5 and stats.tasks_needed(0.01) == 7
    assert stats.sign_test(5, 5) == pytest.approx(1 / 32) and stats.sign_test(4, 8) > 0.5
    gains = [0.1, 0.5, 0.3, 0.7, 0.2, 0.4]
    first, again = stats.mean_interval(gains, 0.05, seed=0), stats.mean_interval(gains, 0.05, seed=0)
    assert first == again and first.low < sum(gains) / len(gains) < first.high and first.level == 0.95
    assert stats.mean_interval([0.3] * 5, 0.05, 0) == stats.Interval(0.3, 0.3, 0.95)
    assert math.isnan(stats.mean_interval([0.3], 0.05, 0).low)
    assert stats.greater_test([3, 4, 5, 6], [0, 1, 2, 1]) < 0.05 < stats.greater_test([1, 2], [2, 1])


def test_alpha_reaches_the_verdict():
    """At alpha 0.001 the sign test needs 10 tasks: the bundled case's 8 are then inconclusive."""
    m = known_case("bottleneck").measurement
    strict = headroom.H7Measurement(**{**m.__dict__, "alpha": 0.001})
    result = headroom.check_context_headroom(strict)
    assert result.status == "inconclusive" and "needs at least 10" in result.message
    assert headroom.check_context_headroom(m).status == "fail"


def test_the_search_scale_is_read_in_the_documented_order():
    head = load_model(H7 / "bottleneck" / "step_final")
    model = TRMInterface.from_etrm(head)
    prefixes = {"a": torch.full((4, 32), 3.0), "b": torch.zeros(4, 32)}
    assert search.search_scale(model, prefixes).rms == pytest.approx(3.0)  # the zero rows are padding
    assert search.search_scale(model, None).source == "the RMS the encoder's output is normalised to"
    foreign = TRMInterface(head, halt_max_steps=2, encoder=head.model.encoder, puzzle_emb_len=4, hidden_size=32)
    # A model whose contexts sit at another scale (x100): the search steps at that scale.
    assert search.search_scale(foreign, None, torch.full((3, 4, 32), 100.0)).rms == pytest.approx(100.0)
    embed = head.model.inner.embed_tokens.embedding_weight
    assert search.search_scale(foreign, None, torch.zeros(3, 4, 32)).rms == pytest.approx(
        float(embed.detach().square().mean().sqrt())
    )


def test_the_encoder_runs_once_per_search_and_gives_the_same_context(monkeypatch):
    """Its output is replayed while the context is replaced; the searched context equals one
    found with the encoder run at every step (the forward hook alone)."""
    head = load_model(H7 / "bottleneck" / "step_final")
    model = TRMInterface.from_etrm(head)
    probe = probes.load_task_probes(H7 / "data" / "fewshot", "test", num_tasks=1, max_demos=3)[0]
    start = model.first_context(probes.query_batch([probe], 3))[0]
    calls = []
    handle = head.model.encoder.register_forward_hook(lambda *_: calls.append(1))
    scale = search.search_scale(model)
    replayed = probes.optimise_context(model, probe, start, 4, 3, scale, queries=2)
    assert len(calls) == 1 and replayed.encoder_runs == 1
    monkeypatch.setattr(model, "_encoder_place", lambda: None)  # no swap: the hook replaces after each run
    calls.clear()
    every_step = probes.optimise_context(model, probe, start, 4, 3, scale, queries=2)
    handle.remove()
    assert len(calls) >= 4 and torch.allclose(replayed.contexts, every_step.contexts, atol=1e-6)
    assert replayed.searched_loss == pytest.approx(every_step.searched_loss, rel=1e-5)


def test_the_search_leaves_the_models_weights_and_their_gradients_as_they_were():
    """Only the contexts are differentiated: no weight gains a .grad (a user's training state is
    untouched, and the backward skips the weight gradients), and requires_grad comes back."""
    head = load_model(H7 / "bottleneck" / "step_final")
    for p in head.parameters():
        p.requires_grad_(True)
    model = TRMInterface.from_etrm(head)
    probe = probes.load_task_probes(H7 / "data" / "fewshot", "test", num_tasks=1, max_demos=3)[0]
    start = model.first_context(probes.query_batch([probe], 3))[0]
    result = probes.optimise_context(model, probe, start, 3, 3, search.search_scale(model), queries=2)
    assert result.lowered == [True]  # it searched
    assert all(p.grad is None and p.requires_grad for p in head.parameters())


def test_a_recurrent_encoder_still_runs_when_its_inputs_change():
    """ETRMTRM's encoder reads its previous context: new inputs every step, so it is run, not replayed."""
    from etrm.config import tiny_config
    from etrm.models import build_model

    torch.manual_seed(0)
    head = build_model(tiny_config("etrmtrm", seq_len=36, max_demos=3, halt_max_steps=3))
    model = TRMInterface.from_etrm(head)
    probe = probes.load_task_probes(H7 / "data" / "fewshot", "test", num_tasks=1, max_demos=3)[0]
    start = torch.zeros(head.config.puzzle_emb_len, head.config.hidden_size)
    result = probes.optimise_context(model, probe, start, 3, 3, search.search_scale(model), queries=2)
    assert result.encoder_runs >= 2

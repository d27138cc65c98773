"""H7's headroom, generalisation gap and alignment (etrm.checks.h7_headroom, h7_generalisation):
each outcome where it is true by construction and nowhere else, no claim on the interop
corpus's random weights, and the measurement on foreign code through --model-code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from etrm.bundled import fixtures_root
from etrm.checks import h7_generalisation as gen
from etrm.checks import h7_headroom as headroom
from etrm.checks import h7_probes as probes
from etrm.checks.h7_measure import measure_case
from etrm.interface import TRMInterface, with_context
from etrm.suite.h7_case import known_case
from etrm.testing.artifacts import BUNDLED
from etrm.testing.verdict import FINDINGS, TestRecord, VerdictTable

CORPUS = fixtures_root() / "interop"


@pytest.fixture(scope="module")
def cases():
    return {name: known_case(name) for name in ("bottleneck", "context_blind")}


def _statuses(case):
    m = case.measurement
    return {
        "context_headroom": headroom.check_context_headroom(m).status,
        "decoder_steerable": headroom.check_decoder_steerable(m).status,
        "embedding_alignment": gen.check_embedding_alignment(
            m, case.train_names, case.heldout_names, case.trm_prefixes
        ).status,
    }


def test_bottleneck_encoder_gives_h7_evidence_and_a_steerable_decoder(cases):
    case = cases["bottleneck"]
    assert _statuses(case) == {"context_headroom": "fail", "decoder_steerable": "pass", "embedding_alignment": "fail"}
    result = headroom.check_context_headroom(case.measurement)
    numbers = result.numbers
    assert numbers["p_value"] <= numbers["alpha"] == 0.05 and numbers["headroom_loss"] > 0.2
    assert 0.25 < numbers["headroom_ci_low"] <= numbers["mean_relative_gain"] <= numbers["headroom_ci_high"]
    assert f"p = {numbers['p_value']:.3g}" in result.message and "bootstrap interval" in result.message
    # The TRM's trained embedding is scored for every held-out task: the dataset maps them all.
    assert numbers["trm_tasks"] == numbers["tasks"] == 8


def test_context_blind_decoder_cannot_be_steered_and_is_no_h7_evidence(cases):
    case = cases["context_blind"]
    assert _statuses(case) == {
        "context_headroom": "inconclusive",
        "decoder_steerable": "fail",
        "embedding_alignment": "inconclusive",
    }
    assert headroom.CANNOT_STEER in headroom.check_decoder_steerable(case.measurement).message
    assert "puzzle_emb" in headroom.check_context_headroom(case.measurement).numbers["trm_embedding"]


def test_finding_gets_its_own_verdict_line(cases):
    result = headroom.check_decoder_steerable(cases["context_blind"].measurement)
    record = TestRecord("t::steer", [headroom.STEERING], outcome="failed", checks=[result.to_dict()])
    row = VerdictTable.build([record], {}).rows[0]
    assert (row.hypothesis, row.verdict) == (headroom.STEERING, FINDINGS[headroom.STEERING]["evidence found"])


@pytest.mark.slow
def test_measurement_is_deterministic(cases):
    """Slow (a second measurement); the default run's suite controls read the same fixture."""
    again = known_case.__wrapped__("bottleneck")
    assert again.measurement.tasks == cases["bottleneck"].measurement.tasks


def test_act_steps_cut_the_episode_short_and_never_run_past_halt_max_steps(monkeypatch):
    """`--h7-act-steps` bounds H7's cost: scores are taken after that many ACT steps, at most
    the model's halt_max_steps (the full evaluation episode)."""
    from etrm.checkpoints import load_model

    head = load_model(fixtures_root() / "h7" / "bottleneck" / "step_final")
    model = TRMInterface.from_etrm(head)
    probe = probes.load_task_probes(
        fixtures_root() / "h7" / "data" / "fewshot", "test", num_tasks=1, max_demos=head.config.max_demos
    )[0]
    batch = probes.query_batch([probe], head.config.max_demos)
    full = model.halt_max_steps
    assert full >= 2, "the fixture must have more than one ACT step to cut"
    calls = []
    step = model.step
    monkeypatch.setattr(model, "step", lambda *a, **k: calls.append(1) or step(*a, **k))
    scores = {}
    for act_steps in (1, None, full + 3):
        calls.clear()
        scores[act_steps] = probes.episode_scores(model, batch, act_steps=act_steps)[0]
        assert len(calls) == (1 if act_steps == 1 else full), act_steps
    assert scores[None] == scores[full + 3] and scores[1] != pytest.approx(scores[None])


def test_free_context_is_what_the_decoder_reads():
    """The hook's replacement reaches the decoder: a shifted context changes the scores."""
    case = known_case("bottleneck", tasks=1, steps=1)
    from etrm.checkpoints import load_model

    head = load_model(fixtures_root() / "h7" / "bottleneck" / "step_final")
    model = TRMInterface.from_etrm(head)
    probe = probes.load_task_probes(
        fixtures_root() / "h7" / "data" / "fewshot", "test", num_tasks=1, max_demos=head.config.max_demos
    )[0]
    batch = probes.query_batch([probe], head.config.max_demos, copies=2)
    own = model.first_context(batch)
    losses, _ = probes.episode_scores(model, batch, torch.stack([own[0], own[0] * -1.0]))
    plain, _ = probes.episode_scores(model, batch)
    assert losses[0] == pytest.approx(plain[0]) and losses[1] != pytest.approx(losses[0])
    assert case.measurement.tasks


def test_with_context_keeps_the_output_type():
    from etrm.models.encoders import EncoderOutput

    new = torch.ones(2, 3, 4)
    out = with_context(
        EncoderOutput(torch.zeros(2, 3, 4), kl=torch.zeros(2)), new, batch_size=2, puzzle_emb_len=3, hidden_size=4
    )
    assert isinstance(out, EncoderOutput) and out.context is new and out.kl is not None
    assert (
        with_context({"context": torch.zeros(2, 3, 4)}, new, batch_size=2, puzzle_emb_len=3, hidden_size=4)["context"]
        is new
    )


@pytest.mark.slow
def test_interop_random_weights_make_no_claim():
    """EXPECTED.md: H3/H7 say nothing on perturbed initialisations; every H7 check says so.
    Slow (a canvas-30 model load and the gate); test_headroom_runs_on_foreign_code covers the loader path
    by default."""
    from etrm.checkpoints import load_model

    head = load_model(CORPUS / "origin" / "etrm-standard" / "step_50")
    prefixes, note = gen.trm_puzzle_prefixes(
        CORPUS / "official" / "trm-bf16" / "step_100",
        gen.trm_data_for(CORPUS / "official" / "trm-bf16" / "step_100", None),
        head.config.puzzle_emb_len,
        head.config.hidden_size,
    )
    assert prefixes, note  # the config's data_paths resolve to official/data, whose identifiers map the tasks
    case = measure_case(
        TRMInterface.from_etrm(head),
        head.config,
        CORPUS / "origin" / "fewshot",
        prefixes,
        note,
        tasks=1,
        steps=1,
        progress=False,
    )
    results = [
        headroom.check_context_headroom(case.measurement),
        headroom.check_decoder_steerable(case.measurement),
        gen.check_generalisation_gap(case.measurement),
        gen.check_embedding_alignment(case.measurement, case.train_names, case.heldout_names, prefixes),
    ]
    assert [r.status for r in results] == ["inconclusive"] * 4, [str(r) for r in results]
    assert all("no claim" in r.message for r in results)


def test_headroom_runs_on_foreign_code(tmp_path):
    """tests/foreign_repo's ETRM, built by its own code through --model-code's loader, with the
    bundled Experiment 1 run's weights (the origin's key layout is etrm's)."""
    import yaml

    from etrm.checkpoints import normalize_key, read_state_dict
    from etrm.model_code import build_model_code, load_model_code

    foreign, data = Path(__file__).parent / "foreign_repo", fixtures_root() / "data" / "fewshot"
    trm = fixtures_root() / "checkpoints" / "trm" / "step_final"
    saved = yaml.safe_load((fixtures_root() / "checkpoints" / "etrm_frozen" / "all_config.yaml").read_text())
    saved["arch"]["name"] = "recursive_reasoning.etrm@TRMWithEncoder"
    (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(saved))
    torch.manual_seed(0)
    head = build_model_code(foreign, tmp_path / "all_config.yaml", data).model.head
    run = fixtures_root() / BUNDLED["etrm_frozen_checkpoint"]
    weights = {normalize_key(k): v for k, v in read_state_dict(run).items()}
    assert set(weights) == set(head.state_dict())
    torch.save({f"_orig_mod.{k}": weights.get(k, v) for k, v in head.state_dict().items()}, tmp_path / "step_1")
    code = load_model_code(foreign, tmp_path / "step_1", data)
    prefixes, note = gen.trm_puzzle_prefixes(
        trm, fixtures_root() / "data" / "trm", code.model.puzzle_emb_len, code.model.hidden_size
    )
    case = measure_case(code.model, code, data, prefixes, note, tasks=2, steps=2, progress=False)
    scores = case.measurement.tasks
    assert len(scores) == 2 and all(s.trm_loss is not None for s in scores)
    assert all(s.demo_loss_searched != s.demo_loss_start for s in scores)  # the free context moved the foreign decoder
    numbers = headroom.check_context_headroom(case.measurement).numbers
    assert {f"task/{s.task}/optimised_loss" for s in scores} <= set(numbers)


def test_report_plots_the_headroom_per_task_and_the_gap(cases, tmp_path):
    from etrm.report import write_report

    m = cases["bottleneck"].measurement
    records = [
        TestRecord(
            f"t::{r.name}", ["hypothesis7"], outcome="failed" if r.status == "fail" else "passed", checks=[r.to_dict()]
        )
        for r in (headroom.check_context_headroom(m), gen.check_generalisation_gap(m))
    ]
    md = write_report(tmp_path, VerdictTable.build(records, {}), None).read_text()
    assert "## Hypothesis 7: context headroom" in md and "8 held-out tasks, 8 optimisation steps" in md
    assert (tmp_path / "h7_headroom.png").stat().st_size > 1000


def test_h7_options_reach_the_plugin_from_investigate():
    import argparse

    from etrm import investigate
    from etrm.testing.artifacts import plugin_args

    parser = argparse.ArgumentParser(prog="etrm")
    investigate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["investigate", "--h7-tasks", "2", "--h7-steps", "3", "--h7-act-steps", "16"])
    assert (args.etrm_h7_tasks, args.etrm_h7_steps, args.etrm_h7_act_steps) == (2, 3, 16)
    assert plugin_args(vars(args))[-6:] == ["--etrm-h7-tasks", "2", "--etrm-h7-steps", "3", "--etrm-h7-act-steps", "16"]
    with pytest.raises(SystemExit):
        parser.parse_args(["investigate", "--h7-steps", "0"])


def _experiment_args(**extra):
    import argparse

    from etrm.experiment1 import command as experiment

    parser = argparse.ArgumentParser(prog="etrm")
    experiment.add_parser(parser.add_subparsers())
    trm, data = fixtures_root() / "checkpoints" / "trm" / "step_final", fixtures_root() / "data" / "fewshot"
    return parser.parse_args(
        [
            "experiment1",
            "--trm-checkpoint",
            str(trm),
            "--data",
            str(data),
            "--out",
            "/tmp/x",
            *[a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", str(v))],
        ]
    )


def test_after_scenario_c_experiment1_says_how_to_measure_the_headroom():
    from etrm.experiment1.h7_followup import hint

    args = _experiment_args()
    text = hint(args, args.trm_checkpoint, Path("/tmp/x/step_30"))
    assert "--then-h7" in text and "-m 'hypothesis7 or context_steering'" in text
    assert "--etrm-checkpoint /tmp/x/step_30" in text  # the run's final checkpoint, audited by investigate


@pytest.mark.slow
def test_then_h7_records_join_the_experiment1_report(tmp_path):
    """Slow (a measurement); test_bottleneck_encoder_gives_h7_evidence_and_a_steerable_decoder covers
    the measurement by default. The bundled Experiment 1 run, its TRM data given."""
    from etrm.checkpoints import load_model
    from etrm.experiment1.command import _verdict
    from etrm.experiment1.h7_followup import h7_records

    head = load_model(fixtures_root() / BUNDLED["etrm_frozen_checkpoint"])
    args = _experiment_args(trm_data=fixtures_root() / "data" / "trm", h7_tasks=2, h7_steps=2)
    records = h7_records(args, args.trm_checkpoint, head, "frozen decoder")
    assert [r.checks[0]["name"] for r in records] == [
        "context_headroom",
        "generalisation_gap",
        "embedding_alignment",
        "decoder_steerable",
    ]
    assert records[0].checks[0]["numbers"]["trm_tasks"] == 2
    rows = {r.hypothesis for r in _verdict(_scenario(), "frozen", records).rows}
    assert rows == {"experiment1", "hypothesis7", "context_steering"}


def _scenario():
    from etrm.checks.result import CheckResult

    return CheckResult.ok("experiment1", "scenario", "C", {"scenario": "C: encoder trains but useless"})

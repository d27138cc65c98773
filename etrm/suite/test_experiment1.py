"""Experiment 1: frozen-decoder run, scenario A / B / C decided from measured numbers."""

from __future__ import annotations

import pytest

from etrm.checks import experiment1 as e1

pytestmark = pytest.mark.experiment1


def history(steps=40, loss=(8.0, 2.0), norm=0.5, evals=(0.0, 0.0), diversity=0.3, key="grad/encoder_norm_preclip"):
    """A constructed metrics log: linear loss, constant norm, evaluations spread over the run."""
    lines = []
    for i in range(steps):
        lines.append(
            {
                "step": i + 1,
                "train/lm_loss": loss[0] + (loss[1] - loss[0]) * i / (steps - 1),
                key: norm,
                "grad/encoder_norm_postclip": min(norm, 1.0),
                "encoder/cross_sample_std": diversity,
                "train/exact_accuracy": 0.0,
            }
        )
    for j, value in enumerate(evals):
        lines.append({"step": (j + 1) * steps // len(evals), "eval/ARC/pass@1": value})
    return lines


@pytest.mark.parametrize(
    "log, scenario",
    [
        (history(evals=(0.0, 0.1, 0.25)), "A: encoder learns"),
        (history(norm=0.0), "B: encoder stuck"),
        (history(loss=(8.0, 7.9)), "B: encoder stuck"),
        (history(evals=(0.0, 0.0, 0.0)), "C: encoder trains but useless"),
    ],
)
def test_decision_rule_on_constructed_histories(log, scenario):
    result = e1.decide_scenario(log)
    assert result.passed and result.numbers["scenario"] == scenario, result.message


def test_scenario_of_the_frozen_decoder_run(artifacts, record_check):
    log = artifacts.require("metrics_log")
    from etrm.training import read_metrics_log

    record_check(e1.decide_scenario(read_metrics_log(log)))


# --- negative controls ---------------------------------------------------------------------


def postclip_only(log):
    """The log as the origin trainer wrote it: encoder norms after clipping only."""
    return [{k: v for k, v in line.items() if k != "grad/encoder_norm_preclip"} for line in log]


def test_control_postclip_only_log_cannot_decide(expect_check_fails):
    # The origin logged grad/encoder_norm after clipping: its "1.0" is the threshold, not a measurement.
    result = e1.decide_scenario(postclip_only(history(norm=3.0)))
    assert "only post-clip encoder norms" in result.message and "100% of steps at 1" in result.message
    expect_check_fails(result, expected="inconclusive")


def test_a_flat_loss_is_scenario_b_even_without_preclip_norms():
    result = e1.decide_scenario(postclip_only(history(loss=(8.0, 7.9))))
    assert result.passed and result.numbers["scenario"] == "B: encoder stuck", result.message
    assert result.numbers["gradient_criterion"] == "post-clip norms only"


def test_control_log_without_evaluations_cannot_decide(expect_check_fails):
    expect_check_fails(e1.decide_scenario(history(evals=())), expected="inconclusive")


@pytest.mark.etrm_slow
def test_live_frozen_decoder_run_decides_a_scenario(artifacts, tmp_path, record_check):
    """The experiment itself: load the TRM decoder, freeze it, train the encoder, decide."""
    trm, data = artifacts.require_matching("trm_checkpoint", "data_dir")
    from etrm.training import read_metrics_log

    log = tmp_path / "metrics.jsonl"
    e1.run_frozen_decoder_experiment(trm, data, log, steps=60, eval_every=20, progress=False)
    record_check(e1.decide_scenario(read_metrics_log(log)))

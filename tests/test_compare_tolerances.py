"""The decisive numbers' tolerances (etrm.testing.decisive, docs/compare.md): a move inside the noise
flags nothing, one past it flags "worse" or "better", and H7 judges by its bootstrap intervals only
when they were recorded. The tables are built from check records as the plugin stores them."""

from __future__ import annotations

import pytest

from etrm.testing.compare import changes, gate_fails
from etrm.testing.decisive import decisive_value
from etrm.testing.verdict import TestRecord, VerdictTable


def table(hypothesis: str, check: str, **numbers) -> VerdictTable:
    record = TestRecord(
        f"etrm/suite/test_{hypothesis}.py::test_it",
        [hypothesis],
        checks=[{"hypothesis": hypothesis, "name": check, "status": "pass", "message": "ok", "numbers": numbers}],
    )
    return VerdictTable.build([record], {})


def kinds(base: VerdictTable, run: VerdictTable) -> list[str]:
    return [c.kind for c in changes(base, run)]


@pytest.mark.parametrize(
    ("factor", "expected"), [(1 / 5, []), (5.0, []), (1 / 20, ["worse"]), (20.0, ["better"])], ids=str
)
def test_h2_gradient_norm_moves_past_a_factor_of_10_only(factor, expected):
    base = table("hypothesis2", "encoder_gradient_every_step", min_param_grad_norm=2e-4)
    run = table("hypothesis2", "encoder_gradient_every_step", min_param_grad_norm=2e-4 * factor)
    assert kinds(base, run) == expected
    assert gate_fails(changes(base, run)) == (expected == ["worse"])


def test_h3_scale_is_judged_by_its_distance_from_one():
    base = table("hypothesis3", "context_scale", ratio=3.0)
    assert kinds(base, table("hypothesis3", "context_scale", ratio=0.4)) == []  # about as far from 1, other side
    assert kinds(base, table("hypothesis3", "context_scale", ratio=9.0)) == ["worse"]  # 3x farther
    assert kinds(base, table("hypothesis3", "context_scale", ratio=1.0)) == ["better"]


def test_exact_numbers_flag_any_move():
    base = table("hypothesis5", "no_evaluation_leakage", leaking_tasks=0)
    assert kinds(base, table("hypothesis5", "no_evaluation_leakage", leaking_tasks=1)) == ["worse"]
    assert kinds(base, table("hypothesis5", "no_evaluation_leakage", leaking_tasks=0)) == []
    spread = table("hypothesis6", "subset_size_invariance", **{"pass@1_4_tasks": 0.01, "pass@1_64_tasks": 0.16})
    flat = table("hypothesis6", "subset_size_invariance", **{"pass@1_4_tasks": 1.0, "pass@1_64_tasks": 1.0})
    assert kinds(flat, spread) == ["worse"] and decisive_value(spread, "hypothesis6").shown == "pass@1 spread 0.15"


def h7(gain: float, low: float, high: float) -> VerdictTable:
    return table(
        "hypothesis7",
        "context_headroom",
        mean_relative_gain=gain,
        headroom_ci_low=low,
        headroom_ci_high=high,
        p_value=0.04,
        alpha=0.05,
        headroom_loss=0.2,
    )


def test_h7_moves_beyond_its_noise_only_when_the_intervals_do_not_overlap():
    base = h7(0.10, 0.05, 0.15)
    assert kinds(base, h7(0.18, 0.12, 0.24)) == []  # overlapping: noise
    assert kinds(base, h7(0.30, 0.20, 0.40)) == ["worse"]  # apart, more headroom: the encoder got weaker
    assert kinds(base, h7(0.01, -0.02, 0.04)) == ["better"]
    assert decisive_value(base, "hypothesis7").shown == "gain 0.1 [0.05, 0.15] p=0.04"


def test_h7_without_intervals_shows_its_headroom_and_judges_no_move():
    """A verdict JSON from before the interval was recorded: headroom_loss only."""
    old = table("hypothesis7", "context_headroom", headroom_loss=0.2)
    assert decisive_value(old, "hypothesis7").shown == "headroom 0.2 loss, interval n/a"
    assert kinds(old, table("hypothesis7", "context_headroom", headroom_loss=2.0)) == []
    assert kinds(old, h7(0.30, 0.20, 0.40)) == []  # one side without an interval: no judgement

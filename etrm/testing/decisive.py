"""Each hypothesis's decisive number, and the noise within which it may move.

`DECISIVE` names, per hypothesis, the check whose number a comparison shows and follows: which
number, how several recordings of it (one per model or checkpoint the check ran on) become one
(the worst), which way is worse, and the tolerance within which a move is noise. The tolerances
are set from how each number was made, so two runs of the same model with another seed move
none of them past it (docs/compare.md holds the same table for users):

- H1's bitwise-equal fraction, H4's mismatch count, H5's leaking tasks and H6's score spread
  are exact: loading, config reading, data building and scoring do not depend on a seed, so any
  move is real.
- H2's smallest per-parameter encoder gradient norm varies with the initialisation by a small
  factor (the bundled frozen ETRM: 2.0e-4 at seed 0, 5.3e-4 at seed 1); a fall by more than 10x
  is beyond that. A starved parameter (0) is evidence of its own.
- H3's context scale against the embeddings (their RMS ratio) may drift by a factor of 2 away
  from 1 before it counts (the check itself allows 1/4-4).
- H7's headroom moves beyond its noise when its bootstrap intervals (`headroom_ci_low`,
  `headroom_ci_high`) do not overlap; without intervals (before they were recorded) the number is
  shown, the interval as "n/a", and no move is judged.
- Experiment 1's scenario ranks A (encoder learns) over C (trains but useless) over B (stuck: no
  gradient reaches it, a broken pipeline); any step down is worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from etrm.testing.verdict import VerdictTable

WORSE, BETTER = "worse", "better"
SCENARIO_RANK = {"A": 0, "C": 1, "B": 2}  # lower is better


@dataclass(frozen=True)
class Value:
    """A hypothesis's decisive number in one run: what the cell shows and what is compared."""

    shown: str
    value: float | None  # None: nothing to compare (shown only)
    low: float | None = None  # an interval around it, where the check has one
    high: float | None = None


@dataclass(frozen=True)
class Decisive:
    hypothesis: str
    check: str
    label: str  # what the number is, in words
    tolerance: str  # the noise within which it may move, in words
    read: Callable[[Mapping[str, Any]], Value | None]  # one recording -> its value (None: not measured)
    worse_is_higher: bool
    moved: Callable[[Value, Value], bool]  # (baseline, run) -> beyond the noise


def _fraction(numbers: Mapping[str, Any]) -> Value | None:
    total, equal = numbers.get("params"), numbers.get("params_equal")
    if not isinstance(total, int) or not isinstance(equal, int) or total == 0:
        return None
    return Value(f"{equal}/{total} params equal", equal / total)


def _number(key: str, fmt: str, unit: str = "") -> Callable[[Mapping[str, Any]], Value | None]:
    def read(numbers: Mapping[str, Any]) -> Value | None:
        value = numbers.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return None
        return Value(f"{value:{fmt}}{unit}", float(value))

    return read


def _scale(numbers: Mapping[str, Any]) -> Value | None:
    ratio = numbers.get("ratio")
    if not isinstance(ratio, (int, float)) or not ratio > 0:
        return None
    return Value(f"context/embedding RMS {ratio:.3g}", abs(math.log2(ratio)))  # distance from 1, in factors of 2


def _spread(numbers: Mapping[str, Any]) -> Value | None:
    scores = [v for k, v in numbers.items() if k.startswith("pass@1_") and isinstance(v, (int, float))]
    if len(scores) < 2:
        return None
    spread = max(scores) - min(scores)
    return Value(f"pass@1 spread {spread:.3g}", float(spread))


def _headroom(numbers: Mapping[str, Any]) -> Value | None:
    gain, low, high = (numbers.get(k) for k in ("mean_relative_gain", "headroom_ci_low", "headroom_ci_high"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (gain, low, high)):
        p = numbers.get("p_value")
        shown = f"gain {gain:.3g} [{low:.3g}, {high:.3g}]" + (f" p={p:.2g}" if isinstance(p, (int, float)) else "")
        return Value(shown, float(gain), float(low), float(high))
    loss = numbers.get("headroom_loss")
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return Value(f"headroom {loss:.3g} loss, interval n/a", float(loss))
    return None


def _scenario(numbers: Mapping[str, Any]) -> Value | None:
    scenario = numbers.get("scenario")
    if not isinstance(scenario, str) or scenario[:1] not in SCENARIO_RANK:
        return None
    return Value(scenario[:1], float(SCENARIO_RANK[scenario[:1]]))


def _exact(base: Value, run: Value) -> bool:
    return abs(run.value - base.value) > 1e-9


def _factor(factor: float) -> Callable[[Value, Value], bool]:
    def moved(base: Value, run: Value) -> bool:
        if base.value <= 0 or run.value <= 0:
            return base.value != run.value
        return abs(math.log(run.value / base.value)) > math.log(factor)

    return moved


def _log2_distance(base: Value, run: Value) -> bool:
    return abs(run.value - base.value) > 1.0


def _intervals_apart(base: Value, run: Value) -> bool:
    if None in (base.low, base.high, run.low, run.high):
        return False  # no interval, no judgement of noise
    return run.low > base.high or run.high < base.low


DECISIVE: dict[str, Decisive] = {
    d.hypothesis: d
    for d in (
        Decisive(
            "hypothesis1",
            "decoder_loads_bitwise",
            "decoder parameters bitwise equal after loading (the worst load)",
            "exact",
            _fraction,
            False,
            _exact,
        ),
        Decisive(
            "hypothesis2",
            "encoder_gradient_every_step",
            "smallest encoder parameter gradient norm over the ACT steps",
            "a factor of 10",
            _number("min_param_grad_norm", ".2e"),
            False,
            _factor(10.0),
        ),
        Decisive(
            "hypothesis3",
            "context_scale",
            "distance of the encoder context RMS from the trained embeddings' RMS (|log2 ratio|, the farthest)",
            "a factor of 2 in the ratio",
            _scale,
            True,
            _log2_distance,
        ),
        Decisive(
            "hypothesis4",
            "config_audit",
            "decoder settings that differ from the TRM's",
            "exact",
            _number("decoder_mismatches", "d", " decoder mismatches"),
            True,
            _exact,
        ),
        Decisive(
            "hypothesis5",
            "no_evaluation_leakage",
            "evaluation tasks found in the train split",
            "exact",
            _number("leaking_tasks", "d", " leaking tasks"),
            True,
            _exact,
        ),
        Decisive(
            "hypothesis6",
            "subset_size_invariance",
            "pass@1 spread across evaluation subset sizes",
            "exact",
            _spread,
            True,
            _exact,
        ),
        Decisive(
            "hypothesis7",
            "context_headroom",
            "headroom: mean per-task relative loss gain of another context, with its bootstrap interval",
            "the intervals do not overlap",
            _headroom,
            True,
            _intervals_apart,
        ),
        Decisive(
            "experiment1",
            "scenario",
            "the decided scenario (A learns, C trains but useless, B stuck)",
            "exact (A over C over B)",
            _scenario,
            True,
            _exact,
        ),
    )
}


def decisive_value(table: VerdictTable, hypothesis: str) -> Value | None:
    """The worst recording of the hypothesis's decisive number over the checks (not negative
    controls) that measured it in this run; None when none did."""
    spec = DECISIVE.get(hypothesis)
    if spec is None:
        return None
    values = [
        value
        for test in table.tests
        if hypothesis in test.hypotheses and not test.negative_control
        for check in test.checks
        if check.get("name") == spec.check and not check.get("negative_control")
        if (value := spec.read(check.get("numbers") or {})) is not None and value.value is not None
    ]
    if not values:
        return None
    return (max if spec.worse_is_higher else min)(values, key=lambda v: v.value)


def direction(hypothesis: str, base: Value, run: Value) -> str | None:
    """WORSE or BETTER when the number moved beyond its tolerance, else None."""
    spec = DECISIVE[hypothesis]
    if base.value is None or run.value is None or not spec.moved(base, run):
        return None
    higher = run.value > base.value
    return WORSE if higher == spec.worse_is_higher else BETTER

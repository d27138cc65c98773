"""CheckResult: validation, scalar normalisation and JSON round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etrm.checks import HYPOTHESES, CheckResult


def test_constructors_set_status_and_passed():
    ok = CheckResult.ok("hypothesis1", "decoder_match", "12 of 12 decoder parameters equal", {"equal": 12})
    bad = CheckResult.fail("hypothesis2", "grad_flow", "3 encoder params got no gradient")
    unsure = CheckResult.inconclusive("hypothesis4", "config", "L_cycles unverified")
    assert (ok.status, ok.passed) == ("pass", True)
    assert (bad.status, bad.passed) == ("fail", False)
    assert (unsure.status, unsure.passed) == ("inconclusive", False)
    assert ok.numbers == {"equal": 12}


@pytest.mark.parametrize("condition, status", [(True, "pass"), (False, "fail"), (np.bool_(False), "fail")])
def test_from_condition(condition, status):
    result = CheckResult.from_condition("hypothesis6", "denominator", condition, "pass@1 1.0 on 4 and 64 tasks")
    assert result.status == status


def test_numbers_are_normalised_to_plain_python_scalars():
    import torch

    result = CheckResult.ok(
        "hypothesis3",
        "scale",
        "context RMS 1.0",
        {
            "rms": np.float32(1.5),
            "count": np.int64(7),
            "finite": np.bool_(True),
            "norm": torch.tensor(2.5),
            "nan": float("nan"),
            "layout": "_orig_mod.",
        },
    )
    assert result.numbers["rms"] == 1.5 and type(result.numbers["rms"]) is float
    assert result.numbers["count"] == 7 and type(result.numbers["count"]) is int
    assert result.numbers["finite"] is True
    assert result.numbers["norm"] == 2.5 and type(result.numbers["norm"]) is float
    assert result.numbers["layout"] == "_orig_mod."


def test_round_trip_through_json():
    result = CheckResult.fail(
        "experiment1",
        "decide",
        "encoder trains but accuracy stays at 0",
        {"scenario": "C: encoder trains but useless", "grad": 0.25, "steps": 100},
    )
    assert CheckResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hypothesis="hypothesis9"), "unknown hypothesis 'hypothesis9'"),
        (dict(status="passed"), "unknown status 'passed'"),
        (dict(name=""), "non-empty name"),
        (dict(message=""), "message must say what was found"),
    ],
)
def test_invalid_fields_are_rejected_with_the_field_named(kwargs, match):
    fields = dict(hypothesis="hypothesis1", name="n", status="pass", message="m") | kwargs
    with pytest.raises(ValueError, match=match):
        CheckResult(**fields)


def test_non_scalar_numbers_are_rejected_naming_check_and_key():
    with pytest.raises(TypeError, match="check 'grad_flow': number 'per_param' must be"):
        CheckResult.ok("hypothesis2", "grad_flow", "ok", {"per_param": [1.0, 2.0]})


def test_from_dict_names_missing_and_unknown_keys():
    with pytest.raises(ValueError, match=r"missing keys \['numbers'\], unknown keys \['passed'\]"):
        CheckResult.from_dict(
            {"hypothesis": "hypothesis1", "name": "x", "status": "pass", "message": "m", "passed": True}
        )


def test_every_hypothesis_has_a_marker_with_a_question():
    from etrm.testing.plugin import MARKERS

    assert all(h in MARKERS and MARKERS[h] for h in HYPOTHESES)

"""The golden-value mechanism itself, in temporary folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from etrm.testing.golden import GoldenError, compare_to_golden


def _values(scale: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "init_digest_len": 64,
        "step1/logits": torch.randn(2, 5, 12, generator=g) * scale,
        "step1/q_logits": torch.randn(2, 2, generator=g),
        "step2/logits": torch.randn(2, 5, 12, generator=g) * scale,
        "step1/context": torch.randn(2, 4, 8, generator=g).to(torch.bfloat16),
        "step1/loss": 2.5,
        "labels": np.arange(10, dtype=np.int64),
    }


def test_missing_record_fails_with_the_update_command(tmp_path):
    diff = compare_to_golden("trm_tiny", _values(), update=False, golden_dir=tmp_path)
    assert diff.status == "missing" and not diff.ok
    assert "run `pytest --update-golden`" in diff.format()
    assert not list(tmp_path.iterdir())


def test_update_writes_exact_arrays_and_a_readable_summary(tmp_path):
    values = _values()
    diff = compare_to_golden("trm_tiny", values, update=True, golden_dir=tmp_path)
    assert diff.status == "created" and diff.ok
    with np.load(tmp_path / "trm_tiny.npz") as data:
        np.testing.assert_array_equal(data["step1/logits"], values["step1/logits"].numpy())
        assert data["labels"].dtype == np.int64
    summary = json.loads((tmp_path / "trm_tiny.json").read_text())
    logits = summary["step1/logits"]
    assert logits["shape"] == [2, 5, 12] and logits["dtype"] == "float32"
    assert logits["mean"] == pytest.approx(float(values["step1/logits"].double().mean()))
    assert len(logits["sha256"]) == 64 and {"std", "min", "max"} <= set(logits)
    assert summary["step1/context"]["dtype"] == "bfloat16" and summary["step1/loss"]["dtype"] == "float"
    assert compare_to_golden("trm_tiny", values, update=False, golden_dir=tmp_path).status == "match"


def test_summation_noise_within_float32_tolerance_matches(tmp_path):
    compare_to_golden("noise", _values(), update=True, golden_dir=tmp_path)
    noisy = _values()
    noisy["step1/logits"] = noisy["step1/logits"] * (1 + 1e-7)
    noisy["step1/context"] = (noisy["step1/context"].float() * 1.001).to(torch.bfloat16)
    assert compare_to_golden("noise", noisy, update=False, golden_dir=tmp_path).status == "match"


def test_a_moved_tensor_is_reported_with_its_step_size_and_stats(tmp_path):
    compare_to_golden("trm_tiny", _values(), update=True, golden_dir=tmp_path)
    moved = _values()
    moved["step2/logits"] = moved["step2/logits"].clone()
    moved["step2/logits"][1, 3, 7] += 0.5
    diff = compare_to_golden("trm_tiny", moved, update=False, golden_dir=tmp_path)
    assert diff.status == "mismatch" and not diff.ok
    assert [d.key for d in diff.diffs] == ["step2/logits"]
    assert diff.diffs[0].max_abs_diff == pytest.approx(0.5, rel=1e-5)
    text = diff.format()
    assert "step2/logits: 1 of 120 values moved, max abs diff 0.5 at index (1, 3, 7)" in text
    assert "old: shape (2, 5, 12), float32, mean" in text and "new: shape (2, 5, 12)" in text
    assert "1 of 7 tensors moved" in text and "step1/logits" not in text


@pytest.mark.parametrize(
    "change, problem, detail",
    [
        (
            lambda v: v.update(labels=v["labels"] + np.eye(1, 10, 3, dtype=np.int64)[0]),
            "values",
            "1 of 10 values moved",
        ),
        (lambda v: v.update({"step1/q_logits": v["step1/q_logits"].double()}), "dtype", "dtype float32 -> float64"),
        (lambda v: v.update({"step1/q_logits": v["step1/q_logits"][:1]}), "shape", "shape (2, 2) -> (1, 2)"),
        (lambda v: v.update({"step3/logits": torch.zeros(1)}), "added", "new tensor"),
        (lambda v: v.pop("step1/loss"), "removed", "not produced any more"),
        (lambda v: v.update({"step1/loss": 2.6}), "values", "2.5 -> 2.6"),
        (lambda v: v.update({"step1/context": v["step1/context"] * 1.1}), "values", "values moved"),
    ],
)
def test_each_kind_of_change_is_reported(tmp_path, change, problem, detail):
    compare_to_golden("g", _values(), update=True, golden_dir=tmp_path)
    changed = _values()
    change(changed)
    diff = compare_to_golden("g", changed, update=False, golden_dir=tmp_path)
    assert diff.status == "mismatch" and len(diff.diffs) == 1
    assert diff.diffs[0].problem == problem and detail in diff.diffs[0].detail


def test_update_rewrites_and_reports_what_had_moved(tmp_path):
    compare_to_golden("g", _values(), update=True, golden_dir=tmp_path)
    diff = compare_to_golden("g", _values(scale=2.0), update=True, golden_dir=tmp_path)
    assert diff.status == "updated" and diff.ok
    assert {d.key for d in diff.diffs} == {"step1/logits", "step2/logits"}
    assert "rewritten: 2 tensors had moved" in diff.format()
    assert compare_to_golden("g", _values(scale=2.0), update=False, golden_dir=tmp_path).status == "match"
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["g.json", "g.npz"]  # no temp files left


def test_bad_names_and_values_are_errors(tmp_path):
    with pytest.raises(GoldenError, match="golden name '../x'"):
        compare_to_golden("../x", {"a": 1.0}, update=True, golden_dir=tmp_path)
    with pytest.raises(GoldenError, match="'g', weights: cannot store a list"):
        compare_to_golden("g", {"weights": [1, 2]}, update=True, golden_dir=tmp_path)
    with pytest.raises(GoldenError, match="no tensors"):
        compare_to_golden("g", {}, update=True, golden_dir=tmp_path)

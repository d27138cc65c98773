"""`etrm bench recursion`'s comparison (etrm.bench.compare, etrm.bench.official): the rows' fields,
the official code and a researcher's model beside ours, and the flags that cannot be honoured.

Everything here runs at the tiny size; the timings themselves are tests/test_bench_recursion.py's.
The official TRM code is not shipped with etrm: the tests that need it read a checkout from
$ETRM_OFFICIAL_TRM and skip saying so without one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from etrm.bench import command, compare, official
from etrm.cli import main

FOREIGN = Path(__file__).resolve().parent / "foreign_repo"
FOREIGN_TRM = FOREIGN / "config" / "arch" / "trm.yaml"
RATIO_FIELDS = ("ours_ms", "official_ms", "user_ms", "floor_ms", "ours_over_floor", "ours_over_official")


def official_checkout() -> str:
    root = os.environ.get(official.OFFICIAL_ENV)
    if not root:
        pytest.skip(f"set {official.OFFICIAL_ENV} to a checkout of SamsungSAILMontreal/TinyRecursiveModels")
    try:
        official.import_official(root)
    except official.OfficialCodeError as err:
        pytest.skip(f"{official.OFFICIAL_ENV}={root}: {err}")
    return root


def json_rows(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_row_has_the_ratio_fields_and_none_for_the_sides_not_run(capsys):
    assert main(["bench", "recursion", "--repeat", "1", "--json"]) == 0
    (row,) = json_rows(capsys)
    assert set(RATIO_FIELDS) <= set(row)
    assert (row["size"], row["mode"], row["dtype"]) == ("tiny", "eager", "float32")
    assert row["official_ms"] is None and row["user_ms"] is None and row["ours_over_official"] is None
    assert row["ours_ms"] > 0 and row["floor_ms"] > 0
    assert row["ours_over_floor"] == pytest.approx(row["ours_ms"] / row["floor_ms"])


def test_bfloat16_applies_to_our_step_and_to_the_floor(capsys, monkeypatch):
    floors = []
    real = compare.kernel_floor_step
    monkeypatch.setattr(compare, "kernel_floor_step", lambda config, *a: floors.append(config) or real(config, *a))
    assert main(["bench", "recursion", "--repeat", "1", "--dtype", "bfloat16", "--json"]) == 0
    (row,) = json_rows(capsys)
    assert row["dtype"] == row["config"]["forward_dtype"] == "bfloat16"
    assert [c.forward_dtype for c in floors] == ["bfloat16"]


def test_each_size_is_one_row_in_the_order_given(capsys, monkeypatch):
    seen = []

    def fake_compare(size, **kwargs):
        seen.append((size, kwargs["dtype"], kwargs["compiled"], kwargs["official"], kwargs["user"]))
        return dict.fromkeys(RATIO_FIELDS, 1.0) | {"size": size}

    monkeypatch.setattr(command, "compare", fake_compare)
    monkeypatch.setattr(command, "cxx_compiler", lambda: "/usr/bin/g++")
    argv = ["bench", "recursion", "--size", "official", "--size", "mid", "--compile", "--dtype", "bfloat16"]
    assert main([*argv, "--json"]) == 0
    assert [row["size"] for row in json_rows(capsys)] == ["official", "mid"]
    assert seen == [("official", "bfloat16", True, None, None), ("mid", "bfloat16", True, None, None)]


def test_the_researchers_model_gets_its_row_at_the_benchmark_size(capsys):
    argv = ["bench", "recursion", "--repeat", "1", "--model-code", str(FOREIGN), "--model-config", str(FOREIGN_TRM)]
    assert main([*argv, "--json"]) == 0
    (row,) = json_rows(capsys)
    assert row["user_ms"] > 0 and row["user_over_ours"] == pytest.approx(row["user_ms"] / row["ours_ms"])
    user = row["user_model"]
    assert user["name"].startswith("TinyRecursiveReasoningModel_ACTV1") and user["config"] == str(FOREIGN_TRM)
    assert user["set"]["hidden_size"] == [512, row["config"]["hidden_size"]]  # its arch file's, then the size's
    assert user["set"]["forward_dtype"] == ["bfloat16", "float32"]


def test_the_text_names_each_side_against_the_floor(capsys):
    argv = ["bench", "recursion", "--repeat", "1", "--model-code", str(FOREIGN), "--model-config", str(FOREIGN_TRM)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "kernel floor:" in out and "x the floor" in out and "your model:" in out and "x ours" in out
    assert "official code:" not in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model-code", str(FOREIGN)], "--model-code and --model-config go together"),
        (["--model-config", str(FOREIGN_TRM)], "--model-code and --model-config go together"),
        (["--model-code", "/no/such/root", "--model-config", str(FOREIGN_TRM)], "--model-code /no/such/root: no such"),
        (["--against-official", "/no/such/checkout"], "--against-official /no/such/checkout: no such folder"),
        (["--against-official", str(FOREIGN), "--model", "etrm"], "use it with --model trm"),
    ],
)
def test_flags_that_cannot_be_honoured_are_one_line(capsys, argv, message):
    assert main(["bench", "recursion", *argv]) == 2
    assert message in capsys.readouterr().err


def test_compile_without_a_cxx_compiler_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(command, "cxx_compiler", lambda: None)
    assert main(["bench", "recursion", "--compile"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        "etrm bench recursion: error: --compile on CPU needs a C++ compiler for torch.compile "
        "(none of $CXX, c++, g++, clang++)"
    )


def test_cxx_compiler_looks_on_path(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    assert compare.cxx_compiler() is None


def test_a_folder_that_is_not_the_official_code_is_named(capsys, tmp_path):
    assert main(["bench", "recursion", "--against-official", str(tmp_path)]) == 1
    assert f"{tmp_path}: no models/recursive_reasoning/trm.py there" in capsys.readouterr().err
    # a TRM of another layout (the origin ETRM's test model) lacks the official inner class
    assert main(["bench", "recursion", "--against-official", str(FOREIGN)]) == 1
    assert "has no attribute 'TinyRecursiveReasoningModel_ACTV1_Inner'" in capsys.readouterr().err


def test_different_logits_are_not_the_same_computation():
    logits = torch.randn(2, 10, 12)
    official.check_same_computation(logits, logits + 1e-6, "float32")  # within float32's rounding
    with pytest.raises(official.OfficialCodeError, match="do not compute the same thing"):
        official.check_same_computation(logits, logits * 1.01, "float32")
    with pytest.raises(official.OfficialCodeError, match="logits are"):
        official.check_same_computation(logits, logits[:1], "float32")


def test_the_official_code_times_beside_ours(capsys):
    root = official_checkout()
    assert main(["bench", "recursion", "--repeat", "1", "--against-official", root, "--json"]) == 0
    (row,) = json_rows(capsys)
    assert row["official_ms"] > 0 and row["ours_over_official"] == pytest.approx(row["ours_ms"] / row["official_ms"])


def test_control_official_code_with_other_weights_is_refused(capsys, monkeypatch):
    """The same checkout with one weight changed after loading computes something else: the row
    is refused before anything is timed, so a ratio never compares different work."""
    root = official_checkout()
    real = compare.official_decoder

    def tampered(*args):
        theirs = real(*args)
        with torch.no_grad():
            next(theirs.parameters()).mul_(1.5)
        return theirs

    monkeypatch.setattr(compare, "official_decoder", tampered)
    assert main(["bench", "recursion", "--repeat", "1", "--against-official", root]) == 1
    assert "they do not compute the same thing" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_rows_compile_every_side(capsys):
    """torch.compile on ours, the official code and the researcher's model (tiny: about a minute of
    Inductor's C++ compilation on 2 cores)."""
    root = official_checkout()
    if compare.cxx_compiler() is None:
        pytest.skip("no C++ compiler for torch.compile's CPU backend")
    argv = ["bench", "recursion", "--repeat", "1", "--compile", "--against-official", root]
    assert main([*argv, "--model-code", str(FOREIGN), "--model-config", str(FOREIGN_TRM), "--json"]) == 0
    (row,) = json_rows(capsys)
    assert row["mode"] == "compiled" and row["infer_ms"] is None  # the ACT steps are eager-only
    assert all(row[name] > 0 for name in RATIO_FIELDS)

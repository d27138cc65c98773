"""The gate (etrm.testing.gate) counts an artifact as checked only when a test that read it ran:
a skip is not a read. A run given --model-code and --model-config in which every check that
would use them is skipped (not applicable, "needs a checkpoint", or left out by -k) exits 1
with the gate's line, whatever the skipped tests read before they skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etrm import cli
from etrm.testing.artifacts import USER, Artifacts
from etrm.testing.gate import unchecked
from etrm.testing.verdict import NOT_RUN, TestRecord

FOREIGN = Path(__file__).resolve().parent / "foreign_repo"
TRM_ARCH = FOREIGN / "config" / "arch" / "trm.yaml"  # no demo encoder: the encoder checks skip
GATE_LINE = (
    "etrm gate failed: no check that ran read --model-code, --model-config (the checks that would use it "
    "were not run or not selected: see the 'not run' reasons above); pass --allow-unchecked to let such a "
    "run pass"
)
USER_READS = {"model_code": {"source": USER, "path": "repo"}, "model_config": {"source": USER, "path": "a.yaml"}}


def investigate(capsys, tmp_path, *selection: str) -> tuple[int, list[dict], list[str]]:
    """`etrm investigate` on tests/foreign_repo's trm.yaml in this process: its status, the
    verdict JSON's tests and the output's gate lines."""
    verdict = tmp_path / "verdict.json"
    argv = ["investigate", "-n", "0", "--model-code", str(FOREIGN), "--model-config", str(TRM_ARCH)]
    status = cli.main(argv + ["--verdict-json", str(verdict), *selection])
    gate = [line for line in capsys.readouterr().out.splitlines() if "etrm gate failed" in line]
    tests = json.loads(verdict.read_text())["tests"] if verdict.is_file() else []
    return status, tests, gate


def test_checks_that_read_the_users_model_and_then_skip_leave_the_gate_failed(capsys, tmp_path):
    """H2's model-code encoder checks build trm.yaml's model with the user's code (so each reads
    --model-code and --model-config, as the verdict records) and then skip: a TRM has no demo
    encoder. Counting those reads would pass the gate on a run that checked nothing."""
    status, tests, gate = investigate(capsys, tmp_path, "-m", "hypothesis2", "-k", "model_code and encoder")
    assert tests and {t["outcome"] for t in tests} == {"skipped"}
    assert all("not applicable to the encoder checks" in t["reason"] for t in tests)
    for test in tests:  # the reads happened: the skip is what keeps them out of the gate
        assert {n for n, r in test["reads"].items() if r["source"] == USER} >= {"model_code", "model_config"}
    assert (status, gate) == (1, [GATE_LINE])


@pytest.mark.parametrize(
    "selection, outcome",
    [
        (("-m", "hypothesis2", "-k", "checkpoint"), "skipped"),  # each says "needs a checkpoint"
        (("-k", "no_check_has_this_name"), None),  # -k leaves out every test
    ],
    ids=["needs_a_checkpoint", "all_deselected"],
)
def test_a_run_whose_checks_of_the_users_model_were_all_skipped_exits_1_in_the_gates_line(
    capsys, tmp_path, selection, outcome
):
    status, tests, gate = investigate(capsys, tmp_path, *selection)
    assert {t["outcome"] for t in tests} == ({outcome} if outcome else set())
    assert all(t["reason"].startswith(NOT_RUN + "needs a checkpoint") for t in tests)
    assert (status, gate) == (1, [GATE_LINE])


@pytest.mark.parametrize(
    "outcome, reason",
    [
        ("skipped", "encoder_gradient_every_step: inconclusive"),  # a check that could not decide
        ("skipped", NOT_RUN + "needs a checkpoint"),
        ("skipped", "xfail: expected to fail"),
        ("error", "error in setup: RuntimeError"),
    ],
)
def test_only_a_test_that_ran_counts_its_reads(outcome, reason):
    artifacts = Artifacts.resolve({"model_code": FOREIGN, "model_config": TRM_ARCH})
    did_not_run = TestRecord("t::a", ["hypothesis2"], outcome=outcome, reason=reason, reads=USER_READS)
    assert unchecked([did_not_run], artifacts) == ["model_code", "model_config"]
    ran = TestRecord("t::b", ["hypothesis2"], outcome="passed", reads=USER_READS)
    assert unchecked([did_not_run, ran], artifacts) == []

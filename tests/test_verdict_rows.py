"""How a verdict row combines its tests, over every combination of outcomes, and what the
row says was read; both on records made by the real plugin, and the read line on the real
suite run on a user's artifacts (docs/hypotheses.md, "How to read a row")."""

from __future__ import annotations

import itertools
import json
import os
import shutil

import numpy  # noqa: F401
import pytest
import torch  # noqa: F401  (pytester restores sys.modules; neither can be imported twice)

from etrm.bundled import fixtures_root
from etrm.cli import main
from etrm.testing.artifacts import BUNDLED
from etrm.testing.verdict import ERROR, EVIDENCE, INCONCLUSIVE, NO_EVIDENCE, TestRecord, VerdictTable

pytest_plugins = ["pytester"]

# One test per outcome a row can hold, all of one hypothesis.
OUTCOMES = """
import pytest
from etrm.checks import CheckResult

pytestmark = pytest.mark.hypothesis1

def test_pass(record_check):
    record_check(CheckResult.ok("hypothesis1", "decoder_match", "12 of 12 equal"))

def test_fail(record_check):
    record_check(CheckResult.fail("hypothesis1", "decoder_match", "11 of 12 equal"))

def test_inconclusive(record_check):
    record_check(CheckResult.inconclusive("hypothesis1", "recursion", "no all_config.yaml beside the checkpoint"))

def test_not_run(artifacts):
    artifacts.require("model_config")

def test_error():
    raise RuntimeError("shape mismatch")

def test_control_caught(expect_check_fails):
    expect_check_fails(CheckResult.fail("hypothesis1", "decoder_match", "0 of 12 equal under a wrong prefix"))

def test_control_blind(expect_check_fails):
    expect_check_fails(CheckResult.ok("hypothesis1", "decoder_match", "12 of 12 equal under a wrong prefix"))

def test_control_error(expect_check_fails):
    raise RuntimeError("the broken variant did not build")

def test_control_not_run(artifacts, expect_check_fails):
    artifacts.require("model_code")
"""
KINDS = (
    "pass",
    "fail",
    "inconclusive",
    "not_run",
    "error",
    "control_caught",
    "control_blind",
    "control_error",
    "control_not_run",
)
CONTROLS_THAT_RAN = {"control_caught", "control_blind", "control_error"}


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, TestRecord]:
    """One TestRecord per outcome, as the plugin records it in a real pytest run."""
    root = tmp_path_factory.mktemp("outcomes")
    (root / "test_outcomes.py").write_text(OUTCOMES)
    out = root / "verdict.json"
    assert (
        pytest.main(
            [
                str(root),
                "-p",
                "no:cacheprovider",
                "-p",
                "no:xdist",
                "-q",
                "--rootdir",
                str(root),
                "-c",
                os.devnull,
                "--etrm-verdict-json",
                str(out),
            ]
        )
        == pytest.ExitCode.TESTS_FAILED
    )
    tests = VerdictTable.from_dict(json.loads(out.read_text())).tests
    return {t.nodeid.rpartition("::test_")[2]: t for t in tests}


def documented_verdict(kinds: set[str]) -> str:
    """docs/hypotheses.md, "How to read a row": first match wins."""
    kinds = {"not_run" if k == "control_not_run" else k for k in kinds}  # listed like a check not run
    if "fail" in kinds:
        return EVIDENCE  # only a check gives evidence, whatever else happened
    if kinds & {"error", "control_error"}:
        return ERROR  # a test or a control raised: never evidence, never a passed control
    if kinds & {"inconclusive", "control_blind"} or not kinds & {"pass", "inconclusive"}:
        return INCONCLUSIVE  # a check could not decide, a control proved nothing, or no check ran
    return NO_EVIDENCE  # every check that ran passed; checks not run are listed


def row_problems(kinds: set[str], records: dict[str, TestRecord]) -> list[str]:
    """How the row built from one test of each of `kinds` departs from the documented rules."""
    row = VerdictTable.build([records[k] for k in sorted(kinds)], {}).rows[0]
    checks = kinds - CONTROLS_THAT_RAN
    expected = {
        "verdict": documented_verdict(kinds),
        "counts": tuple(int(k in kinds) for k in ("pass", "fail", "inconclusive"))
        + (len(kinds & {"not_run", "control_not_run"}),),
        "errors": len(kinds & {"error", "control_error"}),  # a control that raised is an error too
        "controls": (int("control_caught" in kinds), len(kinds & CONTROLS_THAT_RAN)),
    }
    got = {
        "verdict": row.verdict,
        "counts": (row.passed, row.failed, row.skipped, row.not_run),
        "errors": row.errors,
        "controls": (row.controls_passed, row.controls_total),
    }
    problems = [f"{key}: {got[key]!r}, documented {value!r}" for key, value in expected.items() if got[key] != value]
    # Whatever the verdict, the row says what keeps it from a plain "no evidence".
    said = {
        "inconclusive": "1 inconclusive: recursion: no all_config.yaml beside the checkpoint",
        "control_blind": "negative control test_outcomes.py::test_control_blind did not catch its broken variant",
        "not_run": "no model config: pass --etrm-model-config PATH",
        "control_not_run": "pass --etrm-model-code ROOT",
    }
    problems += [f"reason lacks {text!r}" for kind, text in said.items() if kind in kinds and text not in row.reason]
    not_run = len(kinds & {"not_run", "control_not_run"})
    if not_run and f"{not_run} checks not run: " not in row.reason:
        problems.append(f"reason does not count the {not_run} checks not run")
    if not checks & {"pass", "fail", "inconclusive"}:
        text = "only negative controls ran" if not checks else "no check could run"
        if text not in row.reason:
            problems.append(f"reason lacks {text!r}")
    return [f"{'+'.join(sorted(kinds))}: {p} (reason: {row.reason!r})" for p in problems]


def test_every_combination_of_outcomes_gives_the_documented_verdict(records):
    """Each outcome alone and every mix of them: 511 rows."""
    combinations = [set(c) for n in range(1, len(KINDS) + 1) for c in itertools.combinations(KINDS, n)]
    assert len(combinations) == 2 ** len(KINDS) - 1
    problems = [p for kinds in combinations for p in row_problems(kinds, records)]
    assert not problems, f"{len(problems)} departures from the rules:\n" + "\n".join(problems[:20])


def test_a_passing_check_beside_an_inconclusive_one_is_inconclusive(records):
    row = VerdictTable.build([records["pass"], records["inconclusive"], records["control_caught"]], {}).rows[0]
    assert (row.verdict, row.reason) == (
        INCONCLUSIVE,
        "1 inconclusive: recursion: no all_config.yaml beside the checkpoint",
    )
    text = "\n".join(VerdictTable.build([records["pass"], records["inconclusive"]], {}).format_text())
    assert "hypothesis1  inconclusive" in text and "why: 1 inconclusive: recursion:" in text


def _read(nodeid: str, control: bool, **reads: str) -> TestRecord:
    checks = [
        {
            "name": "c",
            "status": "fail" if control else "pass",
            "message": "m",
            "numbers": {},
            "negative_control": control,
            "expected_status": "fail",
        }
    ]
    return TestRecord(
        nodeid,
        ["hypothesis2"],
        checks=checks,
        reads={name: {"source": source, "path": f"/{source}/{name}"} for name, source in reads.items()},
    )


def test_the_read_line_lists_every_source_and_who_read_it():
    records = [
        _read("t.py::test_checkpoint_a", False, etrm_checkpoint="user", data_dir="user"),
        _read("t.py::test_checkpoint_b", False, etrm_checkpoint="user", data_dir="user"),
        _read("t.py::test_tiny_model", False, data_dir="bundled"),
        _read("t.py::test_control_a", True, data_dir="bundled"),
        _read("t.py::test_control_b", True, data_dir="bundled", metrics_log="bundled"),
    ]
    table = VerdictTable.build(records, {}, user_artifacts=True)
    row = table.rows[0]
    assert row.reads == {
        "etrm_checkpoint": {"user": {"checks": 2, "controls": 0}},
        "data_dir": {"user": {"checks": 2, "controls": 0}, "bundled": {"checks": 1, "controls": 2}},
        "metrics_log": {"bundled": {"checks": 0, "controls": 1}},
    }
    read = [line.strip() for line in table.format_text() if line.strip().startswith("read:")]
    assert read == [
        "read: data_dir (yours: 2 checks; bundled: 1 check, 2 controls), etrm_checkpoint (yours), metrics_log (bundled)"
    ]
    assert "data_dir (yours: 2 checks; bundled: 1 check, 2 controls)" in table.format_markdown()
    assert not row.bundled_only and VerdictTable.from_dict(json.loads(json.dumps(table.to_dict()))).rows == [row]
    bundled = VerdictTable.build(records[2:], {}, user_artifacts=True).rows[0]
    assert bundled.bundled_only and bundled.shown_verdict == "no evidence (bundled fixtures only)"


def test_investigating_users_checkpoints_reads_their_data_and_never_the_bundled_log(tmp_path, monkeypatch, capsys):
    """The real suite on a user's TRM and ETRM checkpoints and dataset, without a metrics log:
    H1's and H2's log checks are "not run" (the bundled log is of our fixture run, not theirs),
    and H2's row lists the user's data (its checkpoint check) beside the bundled data (its
    control)."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    fixtures = fixtures_root()
    user = {}
    for name, flag in (("trm_checkpoint", "--trm-checkpoint"), ("etrm_checkpoint", "--etrm-checkpoint")):
        source = fixtures / BUNDLED[name]
        target = tmp_path / name / source.name
        shutil.copytree(source.parent, target.parent)
        user[flag] = str(target)
    user["--data"] = str(shutil.copytree(fixtures / BUNDLED["data_dir"], tmp_path / "data"))
    out = tmp_path / "verdict.json"
    # -k leaves out every check that reads the TRM checkpoint, which the gate would fail: allowed here.
    status = main(
        [
            "investigate",
            "-m",
            "hypothesis1 or hypothesis2",
            "-n",
            "0",
            "--verdict-json",
            str(out),
            "-k",
            "training_log or checkpoint_encoder_requires_grad or control_detached",
            "--allow-unchecked",
            *itertools.chain.from_iterable(user.items()),
        ]
    )
    text = capsys.readouterr().out
    assert status == 0, text
    verdict = json.loads(out.read_text())
    tests = {t["nodeid"].rpartition("::")[2]: t for t in verdict["tests"]}
    for log_test in (
        "test_training_log_records_the_decoder_load",
        "test_training_log_has_healthy_preclip_encoder_norms",
    ):
        assert tests[log_test]["outcome"] == "skipped" and tests[log_test]["reads"] == {}, tests[log_test]
        assert tests[log_test]["reason"] == (
            "not run: needs --metrics-log PATH: --trm-checkpoint, --etrm-checkpoint "
            "is yours, and the bundled metrics log is not of your run"
        )
    rows = {r["hypothesis"]: r for r in verdict["rows"]}
    assert "metrics_log" not in rows["hypothesis1"]["reads"] and "metrics_log" not in rows["hypothesis2"]["reads"]
    assert rows["hypothesis2"]["verdict"] == "no evidence" and rows["hypothesis2"]["not_run"] == 1
    assert rows["hypothesis2"]["reads"]["data_dir"] == {
        "user": {"checks": 1, "controls": 0},
        "bundled": {"checks": 0, "controls": 1},
    }
    assert "read: data_dir (yours: 1 check; bundled: 1 control), etrm_checkpoint (yours)" in text

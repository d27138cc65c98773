"""The etrm pytest plugin end to end, in pytester-made projects: recording checks,
negative controls, the verdict table and its JSON (also under xdist), artifact
options, golden values (root conftest) and the suite's marker rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy  # noqa: F401
import pytest

# numpy and torch stay loaded: pytester restores sys.modules after each test, and neither can
# be imported a second time in one process
import torch  # noqa: F401

from etrm.testing.verdict import plain_nodeid

pytest_plugins = ["pytester"]
ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

# One test module covering every verdict: evidence, no evidence, each road to
# "inconclusive", negative controls, and experiment1's scenario.
CHECKS = """
import pytest
from etrm.checks import CheckResult

@pytest.mark.hypothesis1
@pytest.mark.xdist_group("shared-measurement")
@pytest.mark.parametrize("layout", ["none", "_orig_mod."])
def test_decoder_loads(record_check, layout):
    record_check(CheckResult.ok("hypothesis1", "decoder_match", f"12 of 12 equal ({layout})", {"equal": 12}))

@pytest.mark.hypothesis1
def test_decoder_control(expect_check_fails):
    expect_check_fails(CheckResult.fail("hypothesis1", "decoder_match", "0 of 12 equal under a wrong prefix"))

@pytest.mark.hypothesis2
@pytest.mark.xdist_group("shared-measurement")
def test_grad_flow(record_check):
    record_check(CheckResult.fail("hypothesis2", "grad_flow", "3 of 10 encoder params got no gradient", {"zero": 3}))

@pytest.mark.hypothesis2
def test_grad_norm_assert():
    assert 0.0 > 0.0, "pre-clip norm is zero"

@pytest.mark.hypothesis3
def test_needs_config(artifacts):
    artifacts.require("model_config")

@pytest.mark.hypothesis3
@pytest.mark.etrm_slow
def test_slow_separation():
    pass

@pytest.mark.hypothesis3
def test_shape(record_check):
    record_check(CheckResult.ok("hypothesis3", "shape", "context (2, 16, 32)"))

@pytest.mark.hypothesis4
def test_config(record_check):
    record_check(CheckResult.inconclusive("hypothesis4", "config_audit", "L_cycles unverified: no all_config.yaml"))

@pytest.mark.hypothesis5
def test_no_leak(record_check):
    record_check(CheckResult.ok("hypothesis5", "no_leak", "0 eval examples in train"))

@pytest.mark.hypothesis5
def test_no_leak_control(expect_check_fails):
    expect_check_fails(CheckResult.ok("hypothesis5", "no_leak", "0 eval examples in train\\nper-split counts: ..."))

@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")

@pytest.mark.hypothesis6
def test_eval(record_check):
    record_check(CheckResult.ok("hypothesis6", "denominator", "pass@1 = 1.0 for 4 and 64 tasks"))

@pytest.mark.hypothesis6
def test_eval_error(broken):
    pass

@pytest.mark.hypothesis7
def test_only_control(expect_check_fails):
    expect_check_fails(CheckResult.inconclusive("hypothesis7", "config", "no config saved"), expected="inconclusive")

@pytest.mark.experiment1
def test_decide(record_check):
    record_check(CheckResult.ok("experiment1", "scenario", "decided from 200 steps",
                                {"scenario": "C: encoder trains but useless", "encoder_grad": 0.3}))

def test_unmarked():
    pass
"""


@pytest.fixture
def checks(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_checks=CHECKS)
    return pytester


def _rows(path: Path) -> dict[str, dict]:
    return {row["hypothesis"]: row for row in json.loads(path.read_text())["rows"]}


def test_verdict_rows_follow_the_rules(checks):
    result = checks.runpytest_inprocess("-p", "no:cacheprovider", "--etrm-verdict-json", "out/verdict.json")
    result.assert_outcomes(passed=9, failed=3, skipped=3, errors=1)
    rows = _rows(checks.path / "out" / "verdict.json")
    assert list(rows) == [
        "hypothesis1",
        "hypothesis2",
        "hypothesis3",
        "hypothesis4",
        "hypothesis5",
        "hypothesis6",
        "hypothesis7",
        "experiment1",
    ]
    h1, h2, h3, h4, h5, h6, h7, e1 = rows.values()
    assert (h1["verdict"], h1["passed"], h1["failed"], h1["controls_passed"], h1["controls_total"]) == (
        "no evidence",
        2,
        0,
        1,
        1,
    )
    # Only a check gives evidence: the bare assert is an error, counted apart.
    assert (h2["verdict"], h2["failed"], h2["errors"]) == ("evidence found", 1, 1)
    assert h2["first_error"] == {
        "test": "test_checks.py::test_grad_norm_assert",
        "message": "AssertionError: pre-clip norm is zero",
    }
    assert h2["first_failure"] == {
        "test": "test_checks.py::test_grad_flow",
        "check": "grad_flow",
        "message": "3 of 10 encoder params got no gradient",
    }
    # Checks that could not run for a missing artifact or flag leave the verdict "no evidence".
    assert (h3["verdict"], h3["passed"], h3["skipped"], h3["not_run"]) == ("no evidence", 1, 0, 2)
    assert h3["reason"] == (
        "2 checks not run: no model config: pass --etrm-model-config PATH (1); "
        "slow check: pass --etrm-runslow to run it (1)"
    )
    assert h4["verdict"] == "inconclusive"
    assert h4["reason"] == "1 inconclusive: config_audit: L_cycles unverified: no all_config.yaml"
    # A control whose check did not fail makes a passing check worthless, but is no evidence.
    assert (h5["verdict"], h5["failed"], h5["controls_passed"], h5["controls_total"]) == ("inconclusive", 0, 0, 1)
    assert (
        "negative control test_checks.py::test_no_leak_control did not catch its broken variant: "
        "negative control: no_leak returned 'pass' on a deliberately broken variant" in h5["reason"]
    )
    assert "per-split counts" not in h5["reason"]  # the first line of a failure is its message
    assert (h6["verdict"], h6["errors"]) == ("error", 1)
    assert h6["reason"] == "1 errored" and "fixture exploded" in h6["first_error"]["message"]
    assert (h7["verdict"], h7["reason"], h7["controls_passed"]) == ("inconclusive", "only negative controls ran", 1)
    assert (e1["verdict"], e1["passed"]) == ("C: encoder trains but useless", 1)
    assert e1["scenarios"] == [
        {"test": "test_checks.py::test_decide", "check": "scenario", "scenario": "C: encoder trains but useless"}
    ]
    tests = {t["nodeid"]: t for t in json.loads((checks.path / "out" / "verdict.json").read_text())["tests"]}
    assert "test_checks.py::test_unmarked" not in tests
    assert tests["test_checks.py::test_grad_flow"]["checks"][0]["numbers"] == {"zero": 3}
    assert tests["test_checks.py::test_decoder_control"]["checks"][0]["negative_control"] is True

    result.stdout.fnmatch_lines(
        [
            "*= etrm verdict =*",
            "hypothesis * verdict * passed  failed  errors  skipped  not run  controls  question",
            "hypothesis1 * no evidence * 2 * 0 * 0 * 0 * 0 * 1/1  H1: does the pretrained TRM decoder load correctly?",
            "hypothesis2 * evidence found * 0 * 1 * 1 * 0 * 0 * 0/0  H2: do encoder gradients flow?",
            "    first failing check: grad_flow (test_checks.py::test_grad_flow): 3 of 10 encoder params got no gradient",
            "    first error (not evidence): test_checks.py::test_grad_norm_assert: AssertionError: pre-clip norm is zero",
            "hypothesis3 * no evidence *",
            "    also: 2 checks not run: no model config: pass --etrm-model-config PATH (1); slow check: *",
            "hypothesis6 * error *",
            "experiment1 * C: encoder trains but useless * 1 * 0 * 0 * 0 * 0 * 0/0  Experiment 1*",
        ]
    )


def test_verdict_is_the_same_under_xdist(checks):
    """The only subprocess run: results must reach the controller through the reports. Under
    `--dist loadgroup` (etrm investigate's), xdist renames grouped tests "id@group"; the verdict
    names them by their own ids."""
    checks.runpytest_inprocess("-p", "no:cacheprovider", "--etrm-verdict-json", "serial.json")
    # Hypothesis's and hydra's plugins (1.3 s of imports in each of the three processes) are of
    # no use to these checks.
    result = checks.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:hydra_pytest",
        "-n", "2", "--dist", "loadgroup", "--etrm-verdict-json", "xdist.json",
    )  # fmt: skip
    result.assert_outcomes(passed=9, failed=3, skipped=3, errors=1)
    assert "2 workers" in result.stdout.str()
    serial, xdist = (json.loads((checks.path / name).read_text()) for name in ("serial.json", "xdist.json"))
    assert xdist["rows"] == serial["rows"]
    strip = [{k: v for k, v in t.items() if k != "duration"} for t in serial["tests"]]
    assert [{k: v for k, v in t.items() if k != "duration"} for t in xdist["tests"]] == strip
    result.stdout.fnmatch_lines(["*= etrm verdict =*", "hypothesis2 * evidence found *"])


@pytest.mark.parametrize(
    "reported, own",
    [
        ("m.py::test_a@shared", "m.py::test_a"),  # xdist's loadgroup rename, where pytest honours it
        ("m.py::test_a[x]@shared", "m.py::test_a[x]"),
        ("m.py::test_a[user@host]", "m.py::test_a[user@host]"),  # an "@" of the test's own id stays
        ("m.py::test_a", "m.py::test_a"),
    ],
)
def test_verdict_names_a_test_by_its_own_id(reported, own):
    assert plain_nodeid(reported) == own


def test_no_table_without_hypothesis_tests(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--etrm-verdict-json", "v.json")
    result.assert_outcomes(passed=1)
    assert "etrm verdict" not in result.stdout.str()
    assert json.loads((pytester.path / "v.json").read_text())["rows"] == []


def test_a_check_must_match_the_test_marker(pytester):
    pytester.makepyfile("""
        import pytest
        from etrm.checks import CheckResult

        @pytest.mark.hypothesis2
        def test_mislabelled(record_check):
            record_check(CheckResult.ok("hypothesis3", "shape", "fine"))
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*check 'shape' belongs to hypothesis3 but the test is not marked @pytest.mark.hypothesis3*"]
    )


def test_artifact_options_resolve_against_the_invocation_dir(pytester):
    pytester.makefile(".yaml", cfg="hidden_size: 32\n")
    pytester.makepyfile("""
        def test_paths(artifacts, pytestconfig):
            assert artifacts.model_config == pytestconfig.invocation_params.dir / "cfg.yaml"
            assert artifacts.source("model_config") == "user"
            assert artifacts.device == "cpu"
    """)
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--etrm-model-config", "cfg.yaml").assert_outcomes(passed=1)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--etrm-trm-checkpoint", "nope/step_1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --etrm-trm-checkpoint */nope/step_1: TRM checkpoint file not found"])


def test_device_cuda_without_cuda_is_a_usage_error(pytester):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--etrm-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --etrm-device cuda: CUDA is not available on this machine"])


def test_golden_fixture_fails_until_updated_then_catches_changes(pytester):
    # The fixture and --update-golden belong to the repository's root conftest.
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    test = """
        import numpy as np
        import pytest

        @pytest.fixture
        def golden_dir(pytestconfig):
            return pytestconfig.rootpath / "golden"

        def test_step(golden):
            golden.check("tiny_step", {{"step1/logits": np.array([1.0, 2.0, 3.0], dtype=np.float32) * {scale}}})
    """
    pytester.makepyfile(test_golden_use=test.format(scale=1))
    missing = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0")
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*golden record 'tiny_step' is missing*run `pytest --update-golden`*"])
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0", "--update-golden").assert_outcomes(passed=1)
    assert sorted(p.name for p in (pytester.path / "golden").iterdir()) == ["tiny_step.json", "tiny_step.npz"]
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0").assert_outcomes(passed=1)

    pytester.makepyfile(test_golden_use=test.format(scale=2))
    changed = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0")
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines(
        [
            "*golden record 'tiny_step' changed: 1 of 1 tensors moved*",
            "*step1/logits: 3 of 3 values moved, max abs diff 3 at index (2,)*",
        ]
    )


def test_suite_conftest_rejects_unmarked_tests(pytester):
    suite_conftest = Path(__file__).resolve().parents[1] / "etrm" / "suite" / "conftest.py"
    pytester.makeconftest(suite_conftest.read_text())
    pytester.makepyfile("""
        import pytest

        @pytest.mark.hypothesis1
        def test_marked():
            pass

        def test_forgotten():
            pass
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-m", "hypothesis1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "carry no hypothesis marker" in result.stderr.str() and "test_forgotten" in result.stderr.str()

"""`etrm investigate`: the pytest command line it builds, an in-process run of a check
package from a foreign working directory, the report, and "no checks selected"."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import etrm
from etrm import investigate
from etrm.cli import main

SUITE_MODULE = """
import pytest
from etrm.checks import CheckResult

@pytest.mark.hypothesis1
def test_loads(record_check, artifacts):
    record_check(CheckResult.ok("hypothesis1", "decoder_match", "12 of 12 equal",
                                {"metrics_log_given": artifacts.source("metrics_log") == "user"}))

@pytest.mark.hypothesis2
def test_grads(record_check):
    record_check(CheckResult.fail("hypothesis2", "grad_flow", "encoder gradient is zero"))

@pytest.mark.hypothesis3
def test_needs_config(artifacts):
    artifacts.require("model_config")

@pytest.mark.experiment1
def test_decide(record_check):
    record_check(CheckResult.ok("experiment1", "scenario", "decided", {"scenario": "A: encoder learns"}))
"""


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="etrm")
    investigate.add_parser(parser.add_subparsers())
    return parser.parse_args(["investigate", *argv])


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """A working directory outside the checkout and no pytest settings from the environment."""
    for var in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(var, raising=False)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_is_an_etrm_subcommand():
    from etrm.cli import COMMAND_MODULES

    assert "etrm.investigate" in COMMAND_MODULES


def test_pytest_args_isolate_the_run_and_forward_options(clean_env, monkeypatch):
    (clean_env / "step_5").write_bytes(b"")
    args = _parse("--trm-checkpoint", "step_5", "--device", "cpu", "-m", "hypothesis1", "-n", "2", "--runslow")
    argv = investigate.pytest_args(args, verdict_json="/tmp/v.json")
    assert argv[:4] == ["--pyargs", "etrm.suite", "-m", "hypothesis1"]
    joined = " ".join(argv)
    assert f"-c {os.devnull} --rootdir {Path(etrm.__file__).resolve().parent.parent}" in joined
    assert f"--etrm-trm-checkpoint {clean_env / 'step_5'}" in joined  # absolute: pytest may run elsewhere
    assert (
        "--etrm-verdict-json /tmp/v.json" in joined
        and "--etrm-runslow" in joined
        and argv[-4:] == ["-n", "2", "--dist", "loadgroup"]
    )
    assert "--etrm-investigate" in joined  # messages name investigate's flags
    assert "-p etrm.testing.plugin" not in joined  # the entry point loads it; twice would be an error
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    argv = " ".join(investigate.pytest_args(args, None))
    assert "-p etrm.testing.plugin" in argv and "-p xdist.plugin -n 2" in argv
    default = investigate.pytest_args(_parse(), None)
    assert default[3] == " or ".join(f"hypothesis{i}" for i in range(1, 8)) + " or experiment1 or context_steering"
    # Only the suite's own conftest files load, wherever the command runs from.
    assert f"--confcutdir {Path(etrm.__file__).resolve().parent / 'suite'}" in " ".join(default)


@pytest.mark.parametrize("cores, device, workers", [(1, "cpu", 0), (2, "cpu", 2), (16, "cpu", 4), (16, "cuda", 0)])
def test_workers_default_to_one_per_core_on_the_cpu(monkeypatch, cores, device, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    argv = investigate.pytest_args(_parse("--device", device), None)
    assert (argv[-4:] == ["-n", str(workers), "--dist", "loadgroup"]) if workers else "-n" not in argv
    assert "-n" not in investigate.pytest_args(_parse("-n", "0"), None)  # -n 0: in this process


@pytest.fixture
def fake_suite(tmp_path, monkeypatch) -> str:
    """An importable check package, named for `--suite`."""
    package = tmp_path / "pkgs" / "etrm_fake_suite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "test_fake.py").write_text(SUITE_MODULE)
    monkeypatch.syspath_prepend(str(package.parent))
    return package.name


def test_runs_a_check_package_and_writes_verdict_and_report(clean_env, fake_suite, capsys):
    (clean_env / "m.jsonl").write_text('{"step": 1, "train/lm_loss": 2.0}\n{"step": 2, "train/lm_loss": 1.0}\n')

    status = investigate.run(
        _parse(
            "--suite", fake_suite, "--metrics-log", "m.jsonl", "--verdict-json", "v.json", "--report", "rep", "-n", "0"
        )
    )
    out = capsys.readouterr().out
    assert status == pytest.ExitCode.TESTS_FAILED  # a check failed: evidence for H2
    assert f"rootdir: {Path(etrm.__file__).resolve().parent.parent}" in out and "pyproject.toml" not in out
    rows = {r["hypothesis"]: r for r in json.loads((clean_env / "v.json").read_text())["rows"]}
    assert (rows["hypothesis1"]["verdict"], rows["hypothesis2"]["verdict"]) == ("no evidence", "evidence found")
    assert rows["experiment1"]["verdict"] == "A: encoder learns"
    assert rows["hypothesis3"]["reason"].endswith("not run: no model config: pass --model-config PATH")  # its flag
    tests = json.loads((clean_env / "v.json").read_text())["tests"]
    assert [t["checks"][0]["numbers"] for t in tests if t["hypotheses"] == ["hypothesis1"]] == [
        {"metrics_log_given": True}
    ]
    md = (clean_env / "rep" / "report.md").read_text()
    # The user gave a metrics log, but H2's check read only bundled artifacts.
    assert "| hypothesis2 | H2: do encoder gradients flow? | **evidence found (bundled fixtures only)** |" in md
    assert f"- metrics_log: `{clean_env / 'm.jsonl'}` (user)" in md and "![Training losses](losses.png)" in md
    assert (clean_env / "rep" / "losses.png").is_file()
    assert f"report written to {clean_env / 'rep' / 'report.md'}" in out


def test_no_selected_checks_is_a_usage_error(clean_env, capsys):
    assert main(["investigate", "-m", "hypothesis1 and not hypothesis1", "-n", "0"]) == 2
    assert capsys.readouterr().err.endswith(
        "etrm investigate: error: no checks selected by -m 'hypothesis1 and not hypothesis1' in etrm.suite\n"
    )


def test_a_missing_artifact_is_a_usage_error_naming_its_flag(clean_env, capsys):
    assert main(["investigate", "--data", "no_such_dir"]) == 2
    assert capsys.readouterr().err == "etrm investigate: error: --data no_such_dir: built dataset directory not found\n"


def test_an_unusable_metrics_log_leaves_the_verdict_and_writes_no_report(clean_env, fake_suite, capsys):
    (clean_env / "m.jsonl").write_text("")
    assert main(["investigate", "--suite", fake_suite, "--metrics-log", "m.jsonl", "--report", "rep", "-n", "0"]) == 1
    captured = capsys.readouterr()
    assert "etrm verdict" in captured.out and not (clean_env / "rep" / "report.md").exists()
    assert captured.err.endswith(
        f"etrm investigate: error: report not written: {clean_env / 'm.jsonl'}: metrics log has no lines\n"
    )


SELF_TEST_SUITE = """
import pytest
from etrm.checks import CheckResult

@pytest.mark.hypothesis1
def test_users_file(record_check, artifacts):
    record_check(CheckResult.ok("hypothesis1", "users_file", "read", {"source": artifacts.source("metrics_log")}))

@pytest.mark.etrm_self_test
@pytest.mark.hypothesis1
def test_etrms_own_class(record_check):
    record_check(CheckResult.ok("hypothesis1", "own_class", "etrm's model on the bundled fixtures"))
"""


@pytest.mark.parametrize(
    "given, self_test, runs_own",
    [(False, False, True), (True, False, False), (True, True, True)],
    ids=["bundled-only", "user-artifacts", "user-artifacts-self-test"],
)
def test_etrms_own_regression_runs_on_user_artifacts_only_on_request(
    clean_env, tmp_path, monkeypatch, capsys, given, self_test, runs_own
):
    package = tmp_path / "pkgs" / "etrm_self_suite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "test_self.py").write_text(SELF_TEST_SUITE)
    monkeypatch.syspath_prepend(str(package.parent))
    (clean_env / "m.jsonl").write_text('{"step": 1, "train/lm_loss": 2.0}\n')
    argv = ["--suite", package.name, "--verdict-json", "v.json", "-n", "0"]
    argv += ["--metrics-log", "m.jsonl"] if given else []
    argv += ["--self-test"] if self_test else []
    assert investigate.run(_parse(*argv)) == pytest.ExitCode.OK
    out = capsys.readouterr().out
    verdict = json.loads((clean_env / "v.json").read_text())
    names = {c["name"] for t in verdict["tests"] for c in t["checks"]}
    assert names == ({"users_file", "own_class"} if runs_own else {"users_file"})
    assert verdict["etrm_self_test_run"] is runs_own
    note = "etrm's own regression tests (its model classes on the bundled fixtures) were not run"
    assert (note in out) is not runs_own and ("--self-test runs them too" in out) is not runs_own


GROUPED_SUITE = """
import os
import time
import pytest
from etrm.checks import CheckResult

def _record(record_check, name):
    numbers = {"worker": os.environ["PYTEST_XDIST_WORKER"], "started": time.monotonic()}
    record_check(CheckResult.ok("hypothesis7", name, "ran", numbers))

@pytest.mark.hypothesis7
@pytest.mark.parametrize("i", range(6))
def test_alone(record_check, i):
    _record(record_check, "alone")
    time.sleep(0.05)  # long enough that the worker done with the group takes some of these

@pytest.mark.hypothesis7
@pytest.mark.xdist_group("shared-measurement")
@pytest.mark.parametrize("i", range(4))
def test_grouped(record_check, i):
    _record(record_check, "grouped")

@pytest.mark.hypothesis7
@pytest.mark.etrm_costly
def test_costly(record_check):
    _record(record_check, "costly")
"""


def test_tests_sharing_a_measurement_run_on_one_worker_and_costly_ones_start_first(clean_env, tmp_path):
    """pytest 9.2 loses xdist's own loadgroup (pytest-xdist#1386); etrm's scheduler keeps it.
    The ungrouped tests reaching both workers show that a split would be seen. The costly test,
    collected last, starts in the first round of work. A subprocess: xdist's workers must
    import the check package."""
    package = tmp_path / "pkgs" / "etrm_grouped_suite"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "test_grouped.py").write_text(GROUPED_SUITE)
    # Hypothesis's and pytest-benchmark's plugins (1.2 s of imports in each of the three
    # processes) are of no use to this suite.
    env = os.environ | {
        "PYTHONPATH": str(package.parent),
        "PYTEST_ADDOPTS": "-p no:hypothesispytest -p no:benchmark",
    }
    cmd = [sys.executable, "-m", "etrm.cli", "investigate", "--suite", package.name, "--verdict-json", "v.json"]
    run = subprocess.run([*cmd, "-n", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    workers, started = {"grouped": set(), "alone": set(), "costly": set()}, {}
    for test in json.loads((clean_env / "v.json").read_text())["tests"]:
        for check in test["checks"]:
            workers[check["name"]].add(check["numbers"]["worker"])
            started.setdefault(check["name"], []).append(check["numbers"]["started"])
    assert len(workers["grouped"]) == 1 and workers["alone"] == {"gw0", "gw1"}, workers
    # On its worker, the costly test ran before every ungrouped test (collected before it).
    costly_worker = workers["costly"].pop()
    assert started["costly"][0] < min(
        t["checks"][0]["numbers"]["started"]
        for t in json.loads((clean_env / "v.json").read_text())["tests"]
        if t["checks"][0]["name"] == "alone" and t["checks"][0]["numbers"]["worker"] == costly_worker
    ), started

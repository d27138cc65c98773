"""pytest plugin of etrm, registered under the `pytest11` entry point.

pytest11 loads it into every pytest run of the environment, so it keeps to names of
its own: options `--etrm-*` (dests `etrm_*`), markers `hypothesis1`-`hypothesis7`,
`experiment1` and `etrm_slow`, and it skips only tests carrying `etrm_slow`. A run that
collects no etrm test prints nothing of it. (The checkout's own `slow`, `benchmark`
and `gpu` tests, `--runslow`, `--runbenchmark`, `--update-golden` and the Hypothesis
profiles belong to the repository's root conftest.py.)

Investigation mode: `--etrm-trm-checkpoint`, `--etrm-etrm-checkpoint`, `--etrm-data`,
`--etrm-metrics-log`, `--etrm-model-config` and `--etrm-device` point the checks at a
user's artifacts (fixture `artifacts`, see `etrm.testing.artifacts`, which declares the
options once for this plugin and for `etrm investigate`); without them the bundled
fixtures are used. Tests hand their `CheckResult`s to `record_check` (or, for negative
controls, to `expect_check_fails`); at the end a verdict table per hypothesis is
printed and, with `--etrm-verdict-json PATH`, written as JSON. A run in which no check read
a given model, config or checkpoint exits non-zero (`etrm.testing.gate`) unless
`--etrm-allow-unchecked`. The JSON names what was investigated (`etrm.testing.identity`).

`--etrm-baseline OLD.json` compares the run with an earlier verdict JSON after the table
(`etrm.testing.compare`): one line per change, and the exit status becomes the baseline gate's,
1 when this run has evidence, an error or a worse number the baseline lacks, else 0 (old
evidence remaining is no failure); the unchecked gate above still applies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from etrm.checks.result import CheckResult
from etrm.metrics_log import context_search_block
from etrm.testing.artifacts import (
    CLI_PREFIX,
    OPTIONS,
    PLUGIN_PREFIX,
    ArtifactError,
    Artifacts,
    add_artifact_options,
    flag,
)
from etrm.testing.compare import against_baseline
from etrm.testing.gate import UNCHECKED_STATUS, unchecked, unchecked_message
from etrm.testing.identity import build_identity, now
from etrm.testing.reads import ReadTracker
from etrm.testing.verdict import (
    CHECK_PROPERTY,
    CONTROL_PROPERTY,
    NOT_RUN,
    VerdictCollector,
    VerdictTable,
    read_verdict_json,
)
from etrm.testing.worker_schedule import COSTLY_MARKER, WorkerSchedule, order_and_write_groups

MARKERS = {
    "hypothesis1": "H1: does the pretrained TRM decoder load correctly?",
    "hypothesis2": "H2: do encoder gradients flow?",
    "hypothesis3": "H3: is the encoder output well formed?",
    "hypothesis4": "H4: are the training dynamics sane?",
    "hypothesis5": "H5: is the dataset right?",
    "hypothesis6": "H6: is the evaluator right?",
    "hypothesis7": "H7: is the encoder too weak?",
    "experiment1": "Experiment 1: frozen-decoder run, scenario A/B/C",
    "context_steering": "Premise: can any context steer the decoder? (H7's headroom measurement)",
}
SLOW_MARKER = "etrm_slow"
# etrm's own regression: its model classes, optimizer and codec on the bundled fixtures. It says
# nothing about a user's artifacts, so with those given it runs only on request.
SELF_TEST_MARKER = "etrm_self_test"
INVESTIGATE = "etrm_investigate"
INVESTIGATE_FLAG = flag("investigate")
BASELINE_FLAG = flag("baseline")
_ARTIFACTS_KEY = pytest.StashKey[Artifacts]()
SELF_TEST_NOTE = (
    "etrm's own regression tests (its model classes on the bundled fixtures) were not run: they say "
    "nothing about your artifacts; {flag} runs them too"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("etrm")
    add_artifact_options(group.addoption, PLUGIN_PREFIX)
    group.addoption(
        INVESTIGATE_FLAG,
        dest=INVESTIGATE,
        action="store_true",
        help="set by `etrm investigate`: messages name its flags (--data, not --etrm-data)",
    )
    group.addoption(
        BASELINE_FLAG,
        dest="etrm_baseline",
        metavar="PATH",
        default=None,
        help="an earlier verdict JSON: list what changed after the table; exit 1 only on new evidence, a new error "
        "or a number worse than its tolerance",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.addinivalue_line(
        "markers", f"{SLOW_MARKER}: etrm check taking more than a few seconds; enabled by {flag('runslow')}"
    )
    config.addinivalue_line(
        "markers",
        f"{SELF_TEST_MARKER}: etrm's own regression on the bundled fixtures; "
        f"with user artifacts given, run only with {flag('self-test')}",
    )
    # The suite groups tests that share a costly fixture (pytest-xdist's marker, declared here
    # too so that --strict-markers accepts it where xdist is not installed).
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker under --dist loadgroup")
    config.addinivalue_line(
        "markers",
        f"{COSTLY_MARKER}: runs the user's model at its own width (seconds or more); etrm investigate starts it first",
    )
    prefix = _prefix(config)
    # Resolve artifacts now, so a mistyped path stops the run with one clear error.
    given = {
        name: _user_path(config, config.getoption(f"etrm_{name}"))
        for name, (stem, *_) in OPTIONS.items()
        if stem is not None
    }
    device = config.getoption("etrm_device")
    tracker = ReadTracker()
    config.pluginmanager.register(tracker, "etrm-reads")
    try:
        config.stash[_ARTIFACTS_KEY] = Artifacts.resolve(
            given,
            device=device,
            on_read=tracker.record,
            prefix=prefix,
            model_size=config.getoption("etrm_model_size"),
            encoder_module=config.getoption("etrm_encoder_module"),
        )
    except ArtifactError as err:
        raise pytest.UsageError(str(err)) from None
    # The table is built where all reports arrive: the xdist controller, or the only process.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_VerdictPlugin(config), "etrm-verdict")
        if config.getoption(INVESTIGATE) and config.getoption("dist", None) == "loadgroup":
            config.pluginmanager.register(WorkerSchedule(), "etrm-worker-schedule")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash[_ARTIFACTS_KEY].has_user_artifacts and not config.getoption("etrm_self_test"):
        own = [item for item in items if item.get_closest_marker(SELF_TEST_MARKER) is not None]
        if own:
            items[:] = [item for item in items if item.get_closest_marker(SELF_TEST_MARKER) is None]
            config.hook.pytest_deselected(items=own)
    order_and_write_groups(config, items)
    if config.getoption("etrm_runslow"):
        return
    skip_slow = pytest.mark.skip(reason=f"{NOT_RUN}slow check: pass {flag('runslow', _prefix(config))} to run it")
    for item in items:
        if item.get_closest_marker(SLOW_MARKER) is not None:  # a marker, never a folder name
            item.add_marker(skip_slow)


def _prefix(config: pytest.Config) -> str:
    return CLI_PREFIX if config.getoption(INVESTIGATE) else PLUGIN_PREFIX


def run_artifacts(config: pytest.Config) -> Artifacts:
    """The run's artifacts, for hooks that run before fixtures (e.g. pytest_generate_tests)."""
    return config.stash[_ARTIFACTS_KEY]


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Artifacts:
    """The artifacts the checks run on; `artifacts.require(name)` skips when one is absent."""
    return pytestconfig.stash[_ARTIFACTS_KEY]


@pytest.fixture
def record_check(request: pytest.FixtureRequest) -> Callable[[CheckResult], CheckResult]:
    """Record a check's result for the verdict table and make it the test's outcome:
    "fail" fails the test (evidence), "inconclusive" skips it, "pass" returns the result."""

    def record(result: CheckResult) -> CheckResult:
        _store(request.node, result, negative_control=False)
        if result.status == "fail":
            pytest.fail(f"{result.name}: {result.message}", pytrace=False)
        if result.status == "inconclusive":
            pytest.skip(f"{result.name}: {result.message}")
        return result

    return record


@pytest.fixture
def expect_check_fails(request: pytest.FixtureRequest) -> Callable[..., CheckResult]:
    """Negative control: the check ran on a deliberately broken variant and must report it.

    `expect_check_fails(result)` passes the test when `result.status == "fail"` (or the
    given `expected` status, e.g. "inconclusive" for an unverifiable setting) and fails
    it otherwise. The test is counted as a control in the verdict, never as evidence, also
    when it raises before it records a result (an error, never a passed control)."""
    request.node.user_properties.append((CONTROL_PROPERTY, True))

    def expect(result: CheckResult, expected: str = "fail") -> CheckResult:
        if expected not in ("fail", "inconclusive"):
            raise ValueError(f"a negative control expects 'fail' or 'inconclusive', not {expected!r}")
        _store(request.node, result, negative_control=True, expected_status=expected)
        if result.status != expected:
            pytest.fail(
                f"negative control: {result.name} returned {result.status!r} on a deliberately "
                f"broken variant instead of {expected!r}, so it cannot detect this fault: "
                f"{result.message}",
                pytrace=False,
            )
        return result

    return expect


def _store(node: pytest.Item, result: CheckResult, **flags: object) -> None:
    if not isinstance(result, CheckResult):
        raise TypeError(f"{node.nodeid}: expected a CheckResult, got {type(result).__name__}")
    if node.get_closest_marker(result.hypothesis) is None:
        pytest.fail(
            f"{node.nodeid}: check {result.name!r} belongs to {result.hypothesis} but the test is "
            f"not marked @pytest.mark.{result.hypothesis}, so the verdict table would not count it",
            pytrace=False,
        )
    # user_properties travel inside the TestReport, which is how xdist workers reach the controller.
    node.user_properties.append((CHECK_PROPERTY, {**result.to_dict(), **flags}))


def _user_path(config: pytest.Config, value: str | None) -> Path | None:
    # Relative paths are relative to where pytest was invoked, not to the rootdir.
    return None if value is None else config.invocation_params.dir / Path(value).expanduser()


# --- verdict table ---------------------------------------------------------------------------


class _VerdictPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.collector = VerdictCollector()
        self.unchecked_line: str | None = None  # set at the session's end when the gate fails
        self.started = now()
        self.baseline_lines: list[str] = []  # the comparison with --etrm-baseline, set at the session's end
        given = config.getoption("etrm_baseline")
        self.baseline_path = _user_path(config, given) if given else None
        try:  # read now: a bad baseline stops the run before any check
            self.baseline = read_verdict_json(self.baseline_path) if self.baseline_path else None
        except (OSError, ValueError) as err:
            shown = "--baseline" if config.getoption(INVESTIGATE) else BASELINE_FLAG
            raise pytest.UsageError(f"{shown}: {str(err).splitlines()[0]}") from None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.add_report(report)

    def table(self) -> VerdictTable:
        user = self.config.stash[_ARTIFACTS_KEY].has_user_artifacts
        return VerdictTable.build(self.collector.records(), MARKERS, user_artifacts=user)

    def identified_table(self) -> VerdictTable:
        """The table with what the run investigated (hashes the checkpoints read: once, at the end)."""
        table = self.table()
        table.identity = build_identity(
            self.config.stash[_ARTIFACTS_KEY],
            [t.reads for t in table.tests],
            self.started,
            self.config.invocation_params.args,
        )
        table.context_search = context_search_block(self.config.stash[_ARTIFACTS_KEY].metrics_log)
        return table

    def pytest_terminal_summary(self, terminalreporter) -> None:
        table = self.table()
        if table.rows:
            terminalreporter.write_sep("=", "etrm verdict")
            for line in table.format_text():
                terminalreporter.write_line(line)
            if self.self_test_left_out():
                terminalreporter.write_line(SELF_TEST_NOTE.format(flag=flag("self-test", _prefix(self.config))))
        if self.unchecked_line:
            terminalreporter.write_line(self.unchecked_line, red=True, bold=True)
        for line in self.baseline_lines:
            terminalreporter.write_line(line)

    def self_test_left_out(self) -> bool:
        return self.config.stash[_ARTIFACTS_KEY].has_user_artifacts and not self.config.getoption("etrm_self_test")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        artifacts = self.config.stash[_ARTIFACTS_KEY]
        missed = unchecked(self.collector.records(), artifacts)
        if missed and not self.config.getoption("etrm_allow_unchecked") and not self.config.option.collectonly:
            self.unchecked_line = unchecked_message(missed, artifacts)
            # -k or -m may deselect every test: pytest's "no tests collected" is no pass either.
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = UNCHECKED_STATUS
        target = self.config.getoption("etrm_verdict_json")
        table = self.identified_table() if target or self.baseline else None
        if self.baseline is not None and not self.config.option.collectonly:
            self.baseline_lines, worse = against_baseline(self.baseline, table, str(self.baseline_path))
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
                failed = worse or self.unchecked_line is not None
                session.exitstatus = pytest.ExitCode.TESTS_FAILED if failed else pytest.ExitCode.OK
        if target:
            path = self.config.invocation_params.dir / target
            path.parent.mkdir(parents=True, exist_ok=True)
            verdict = table.to_dict() | {"etrm_self_test_run": not self.self_test_left_out()}
            path.write_text(json.dumps(verdict, indent=1) + "\n")

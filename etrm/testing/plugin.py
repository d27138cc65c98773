"""pytest plugin of etrm, registered under the `pytest11` entry point.

It registers the markers, the flags that enable slow and benchmark tests (not an
`addopts -m` expression, which `pytest -m hypothesis1` would replace), and skips
`gpu` tests with a reason when CUDA is absent.

Investigation mode: `--trm-checkpoint`, `--etrm-checkpoint`, `--data`,
`--metrics-log`, `--model-config` and `--device` point the checks at a user's
artifacts (fixture `artifacts`, see `etrm.testing.artifacts`); without them the
bundled fixtures are used. Tests hand their `CheckResult`s to `record_check`
(or, for negative controls, to `expect_check_fails`); at the end a verdict table
per hypothesis is printed and, with `--verdict-json PATH`, written as JSON.
Golden regression values: fixture `golden`, rewritten by `--update-golden`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from etrm.checks.result import CheckResult
from etrm.testing.artifacts import DEVICES, OPTIONS, ArtifactError, Artifacts
from etrm.testing.reads import ReadTracker
from etrm.testing.verdict import CHECK_PROPERTY, NOT_RUN, VerdictCollector, VerdictTable

MARKERS = {
    "hypothesis1": "H1: does the pretrained TRM decoder load correctly?",
    "hypothesis2": "H2: do encoder gradients flow?",
    "hypothesis3": "H3: is the encoder output well formed?",
    "hypothesis4": "H4: are the training dynamics sane?",
    "hypothesis5": "H5: is the dataset right?",
    "hypothesis6": "H6: is the evaluator right?",
    "hypothesis7": "H7: is the encoder too weak?",
    "experiment1": "Experiment 1: frozen-decoder run, scenario A/B/C",
    "gpu": "needs CUDA; skipped with a reason when absent",
    "slow": "takes more than a few seconds; enabled by --runslow",
    "benchmark": "pytest-benchmark measurement; enabled by --runbenchmark, run without xdist (-n 0)",
}
_ARTIFACTS_KEY = pytest.StashKey[Artifacts]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("etrm")
    group.addoption("--runslow", action="store_true", help="run tests marked slow")
    group.addoption("--runbenchmark", action="store_true", help="run tests marked benchmark")
    for name, (option, metavar, _, what) in OPTIONS.items():
        if option is not None:
            group.addoption(option, dest=f"etrm_{name}", metavar=metavar, default=None,
                            help=f"{what} to investigate (default: the bundled fixture)")
    group.addoption("--device", dest="etrm_device", choices=DEVICES, default="cpu",
                    help="device the checks run on (default: cpu)")
    group.addoption("--verdict-json", dest="etrm_verdict_json", metavar="PATH", default=None,
                    help="write the verdict table and every recorded check as JSON")
    group.addoption("--update-golden", action="store_true",
                    help="rewrite the golden regression values under fixtures/golden/")


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    # Resolve artifacts now, so a mistyped path stops the run with one clear error.
    given = {name: _user_path(config, config.getoption(f"etrm_{name}"))
             for name, (option, *_) in OPTIONS.items() if option is not None}
    device = config.getoption("etrm_device")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: CUDA is not available on this machine")
    tracker = ReadTracker()
    config.pluginmanager.register(tracker, "etrm-reads")
    try:
        config.stash[_ARTIFACTS_KEY] = Artifacts.resolve(given, device=device, on_read=tracker.record)
    except ArtifactError as err:
        raise pytest.UsageError(str(err)) from None
    # The table is built where all reports arrive: the xdist controller, or the only process.
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_VerdictPlugin(config), "etrm-verdict")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason=f"{NOT_RUN}slow test: pass --runslow to run it")
    skip_bench = pytest.mark.skip(reason="benchmark: pass --runbenchmark (and -n 0) to run it")
    skip_gpu = pytest.mark.skip(reason="CUDA is not available on this machine")
    has_cuda = None  # torch is imported only when a gpu test is collected
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "benchmark" in item.keywords and not config.getoption("--runbenchmark"):
            item.add_marker(skip_bench)
        if "gpu" in item.keywords:
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
                item.add_marker(skip_gpu)


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
    it otherwise. The test is counted as a control in the verdict, never as evidence."""

    def expect(result: CheckResult, expected: str = "fail") -> CheckResult:
        if expected not in ("fail", "inconclusive"):
            raise ValueError(f"a negative control expects 'fail' or 'inconclusive', not {expected!r}")
        _store(request.node, result, negative_control=True, expected_status=expected)
        if result.status != expected:
            pytest.fail(f"negative control: {result.name} returned {result.status!r} on a deliberately "
                        f"broken variant instead of {expected!r}, so it cannot detect this fault: "
                        f"{result.message}", pytrace=False)
        return result

    return expect


@pytest.fixture
def golden_dir() -> Path:
    """Folder of the golden records (override this fixture to use another one)."""
    from etrm.testing.golden import default_golden_dir

    return default_golden_dir()


@pytest.fixture
def golden(pytestconfig: pytest.Config, golden_dir: Path):
    """`golden.check(name, tensors)` compares with fixtures/golden/<name>.npz, failing with a
    readable diff; `--update-golden` rewrites the record instead."""
    from etrm.testing.golden import GoldenChecker

    return GoldenChecker(update=pytestconfig.getoption("--update-golden"), golden_dir=golden_dir)


def _store(node: pytest.Item, result: CheckResult, **flags: object) -> None:
    if not isinstance(result, CheckResult):
        raise TypeError(f"{node.nodeid}: expected a CheckResult, got {type(result).__name__}")
    if node.get_closest_marker(result.hypothesis) is None:
        pytest.fail(f"{node.nodeid}: check {result.name!r} belongs to {result.hypothesis} but the test is "
                    f"not marked @pytest.mark.{result.hypothesis}, so the verdict table would not count it",
                    pytrace=False)
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

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.add_report(report)

    def table(self) -> VerdictTable:
        user = self.config.stash[_ARTIFACTS_KEY].has_user_artifacts
        return VerdictTable.build(self.collector.records(), MARKERS, user_artifacts=user)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        table = self.table()
        if not table.rows:
            return
        terminalreporter.write_sep("=", "etrm verdict")
        for line in table.format_text():
            terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        target = self.config.getoption("etrm_verdict_json")
        if target:
            path = self.config.invocation_params.dir / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.table().to_dict(), indent=1) + "\n")


def _register_hypothesis_profiles() -> None:
    # Registered only: this plugin loads in every pytest run of the environment, so which
    # profile is active is the project's choice (etrm's root conftest loads "ci").
    from hypothesis import HealthCheck, settings

    # Derandomised and without deadlines: torch calls vary in time on shared CI cores.
    settings.register_profile("ci", derandomize=True, deadline=None, max_examples=15,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", deadline=None, max_examples=20)


_register_hypothesis_profiles()

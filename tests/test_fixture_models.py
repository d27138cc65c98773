"""The bundled model fixtures are what their committed generator produces."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.testing.artifacts import fixtures_root

GENERATED = ["checkpoints/trm/step_final", "checkpoints/trm/all_config.yaml", "checkpoints/trm/step_final.etrm.json",
             "checkpoints/etrm_frozen/step_final", "checkpoints/etrm_unfrozen/step_final",
             "metrics/experiment1.jsonl"]


@pytest.mark.slow
def test_regenerating_the_model_fixtures_gives_identical_files(tmp_path):
    root = fixtures_root()
    shutil.copytree(root / "data", tmp_path / "data")
    subprocess.run([sys.executable, str(root / "make_checkpoints.py"), "--root", str(tmp_path)], check=True,
                   capture_output=True)
    changed = [name for name in GENERATED if (tmp_path / name).read_bytes() != (root / name).read_bytes()]
    assert not changed, f"regenerated fixtures differ: {changed}"


def test_every_bundled_artifact_exists():
    from etrm.testing.artifacts import BUNDLED

    missing = [f"fixtures/{path}" for path in BUNDLED.values() if not (fixtures_root() / path).exists()]
    assert not missing, f"run the fixture generators: missing {missing}"
    assert all((fixtures_root() / name).is_file() for name in GENERATED)
    assert Path(fixtures_root() / "make_checkpoints.py").is_file()

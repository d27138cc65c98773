"""The bundled model fixtures are what their committed generator produces.

Bit for bit only on a CPU like the one that made them: initialisers and kernels round by
instruction set (AVX-512 vs AVX2), and training amplifies a last-bit difference into
different weights (measured: a TRM regenerated on an AVX-512 machine differs by up to 92%
of a tensor's norm from the committed AVX2 one; pinning ATEN_CPU_CAPABILITY, oneDNN and MKL
to AVX2 does not restore the bits). So on another CPU the test checks what holds
everywhere: the same files with the same keys, shapes and dtypes, byte-identical configs,
and a generator that is deterministic on this machine (two runs, identical bytes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from etrm.testing.artifacts import fixtures_root

CHECKPOINTS = [
    "checkpoints/trm/step_final",
    "checkpoints/etrm_frozen/step_final",
    "checkpoints/etrm_unfrozen/step_final",
]
CONFIGS = ["checkpoints/trm/all_config.yaml", "checkpoints/trm/step_final.etrm.json"]
METRICS = "metrics/experiment1.jsonl"
GENERATED = CHECKPOINTS + CONFIGS + [METRICS]


def _regenerate(root: Path) -> Path:
    shutil.copytree(fixtures_root() / "data", root / "data")
    subprocess.run(
        [sys.executable, str(fixtures_root() / "make_checkpoints.py"), "--root", str(root)],
        check=True,
        capture_output=True,
    )
    return root


def _layout(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (tuple(v.shape), v.dtype) for k, v in state.items() if torch.is_tensor(v)}


@pytest.mark.slow
def test_regenerating_the_model_fixtures_gives_the_same_files(tmp_path):
    root, new = fixtures_root(), _regenerate(tmp_path / "a")
    changed = [name for name in GENERATED if (new / name).read_bytes() != (root / name).read_bytes()]
    if not changed:
        return  # a CPU like the one that made them: bit for bit
    assert not [n for n in CONFIGS if n in changed], f"configs differ, not only numerics: {changed}"
    for name in CHECKPOINTS:
        assert _layout(new / name) == _layout(root / name), f"{name}: other keys, shapes or dtypes"
    lines = [[sorted(json.loads(line)) for line in (r / METRICS).read_text().splitlines()] for r in (root, new)]
    assert lines[0] == lines[1], f"{METRICS}: other lines or metric names"
    again = _regenerate(tmp_path / "b")
    assert [n for n in GENERATED if (again / n).read_bytes() != (new / n).read_bytes()] == [], (
        "the generator is not deterministic on this machine"
    )


def test_every_bundled_artifact_exists():
    from etrm.testing.artifacts import BUNDLED

    missing = [f"fixtures/{path}" for path in BUNDLED.values() if not (fixtures_root() / path).exists()]
    assert not missing, f"run the fixture generators: missing {missing}"
    assert all((fixtures_root() / name).is_file() for name in GENERATED)
    assert Path(fixtures_root() / "make_checkpoints.py").is_file()

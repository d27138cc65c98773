"""The bundled data fixtures are what their generator produces, byte for byte."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from etrm.data import fixture_data_dir
from etrm.data.datasets import load_metadata
from etrm.fixtures.make_data import make_data, select_task_ids


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_regenerating_the_fixtures_gives_identical_files(tmp_path):
    fresh = make_data(tmp_path)
    for mode, folder in fresh.items():
        assert digests(folder) == digests(fixture_data_dir(mode)), f"fixtures/data/{mode} is stale: rerun make_data"


def test_fixture_matches_the_tiny_config_and_stays_small():
    from etrm.config import tiny_config

    for mode in ("fewshot", "trm"):
        folder = fixture_data_dir(mode)
        assert load_metadata(folder, "train").seq_len == tiny_config().seq_len
        assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 500_000
    ids = select_task_ids()
    assert len(ids) == 12 and ids == sorted(ids[:8]) + sorted(ids[8:])


def test_unknown_fixture_mode():
    with pytest.raises(ValueError, match="unknown fixture mode"):
        fixture_data_dir("both")

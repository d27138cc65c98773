"""Shared by the unit tests: the plugin imports pytester runs reuse, and the canvas-30 batch."""

from __future__ import annotations

import pytest

# pytester's in-process runs restore sys.modules afterwards, so each re-imports what the plugins
# import lazily: hypothesis, hydra (blocked out here by addopts, not in a pytester directory),
# and their dependencies, 3-4 s a run on 2 cores. Imported here, before any run's snapshot, they
# stay; registered for assertion rewriting first, as the runs' plugin manager expects of them.
pytest.register_assert_rewrite("hypothesis", "hydra")
for _plugin_import in ("hypothesis", "hydra"):
    try:
        __import__(_plugin_import)
    except ImportError:  # only a speed-up: without it, pytester runs import what they need
        pass


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester without the unraisable-exception plugin in its runs: each run's unconfigure
    collected garbage over this process's whole heap (torch's objects included), about 0.25 s a
    run and 8.7 s of a serial default run on an AVX2 core. No inner run here tests __del__."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:unraisableexception")
    return pytester


# The origin ETRM builder's few-shot build of real ARC-AGI-1 tasks (fixtures/interop/README.md).
INTEROP_FEWSHOT = "interop/origin/fewshot"


@pytest.fixture(scope="session")
def canvas30_batch():
    """The first two queries of the interop few-shot test split at seq_len 900, one demo each
    (one demo keeps the 1800-token encoder pass affordable); most labels are ignored PAD."""
    from etrm.bundled import fixtures_root
    from etrm.data.datasets import FewShotPuzzleDataset
    from etrm.models.loss import IGNORE_LABEL_ID

    dataset = FewShotPuzzleDataset(fixtures_root() / INTEROP_FEWSHOT, "test", 2, max_demos=1, test_mode=True)
    batch = dataset.first_batch()
    assert batch["inputs"].shape == (2, 900) and (batch["labels"] == IGNORE_LABEL_ID).any(), (
        "not a padded canvas-30 batch"
    )
    return batch

"""Root conftest: what only this repository's own tests use. The etrm plugin
(`etrm.testing.plugin`, pytest11 entry point) loads into every pytest run of an
environment where etrm is installed, so the generic names live here instead: the
`slow`, `benchmark` and `gpu` markers and their skipping, `--runslow`, `--runbenchmark`,
`--update-golden` and the `golden` fixture, the Hypothesis profiles `etrm-ci`/`etrm-dev`,
and the checkout's defaults (two xdist workers, one thread each). It still works
without xdist or with plugin autoloading off."""

import os
import sys
from pathlib import Path

# Cache compiled and assertion-rewritten modules even where the environment sets
# PYTHONDONTWRITEBYTECODE: without the cache each process of a run (the controller, two xdist
# workers, every CLI subprocess) rewrites ~250 modules again, hypothesis's among them, which was
# 5 s of each process's start-up on a 2-core AVX2 machine. Set before hypothesis is imported, and
# in the environment the workers and subprocesses inherit; it concerns only this checkout's runs.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Deterministic, one-thread-per-worker CPU runs regardless of the host.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The default run: two xdist workers (the CI machine has two cores).
DEFAULT_WORKERS = 2

if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):  # entry points off: load our plugin by hand
    pytest_plugins = ["etrm.testing.plugin"]

# Property tests: derandomised and without deadlines, as torch calls vary in time on shared
# CI cores. `--hypothesis-profile etrm-dev` explores randomly (Hypothesis's own option
# loads after this conftest's pytest_configure, so it wins).
settings.register_profile(
    "etrm-ci", derandomize=True, deadline=None, max_examples=15, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("etrm-dev", deadline=None, max_examples=20)

MARKERS = {
    "gpu": "needs CUDA; skipped with a reason when absent",
    "slow": "takes more than a few seconds; enabled by --runslow",
    "benchmark": "pytest-benchmark measurement; enabled by --runbenchmark, run without xdist (-n 0)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("etrm-repository", "etrm repository tests")
    group.addoption("--runslow", action="store_true", help="run tests marked slow (and etrm's etrm_slow checks)")
    group.addoption("--runbenchmark", action="store_true", help="run tests marked benchmark")
    group.addoption(
        "--update-golden", action="store_true", help="rewrite the golden regression values under fixtures/golden/"
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    if config.getoption("--runslow"):  # one flag for the checkout's slow tests and the suite's
        config.option.etrm_runslow = True
    settings.load_profile("etrm-ci")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow test: pass --runslow to run it")
    skip_bench = pytest.mark.skip(reason="benchmark: pass --runbenchmark (and -n 0) to run it")
    skip_gpu = pytest.mark.skip(reason="CUDA is not available on this machine")
    has_cuda = None  # torch is imported only when a gpu test is collected
    for item in items:
        # Markers, not item.keywords: those also hold folder and file names.
        if item.get_closest_marker("slow") and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("benchmark") and not config.getoption("--runbenchmark"):
            item.add_marker(skip_bench)
        if item.get_closest_marker("gpu"):
            if has_cuda is None:
                import torch

                has_cuda = torch.cuda.is_available()
            if not has_cuda:
                item.add_marker(skip_gpu)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # Parallel unless the run chose otherwise (-n N, -p no:xdist), only collects, or
    # benchmarks (pytest-benchmark switches itself off under xdist). Workers run this hook
    # too and must not start workers of their own.
    if (
        config.pluginmanager.has_plugin("xdist")
        and not hasattr(config, "workerinput")
        and config.getoption("numprocesses", None) is None
        and not config.option.collectonly
        and not config.getoption("--runbenchmark")
    ):
        config.option.numprocesses = DEFAULT_WORKERS


@pytest.fixture
def golden_dir() -> Path:
    """Folder of the golden records (override this fixture to use another one)."""
    from etrm.testing.golden import default_golden_dir

    return default_golden_dir()


@pytest.fixture
def golden(pytestconfig: pytest.Config, golden_dir: Path):
    """`golden.check(name, tensors)` compares with fixtures/golden/<name>.npz, failing with a
    readable diff; `--update-golden` rewrites the record instead."""
    from etrm.testing.golden import GoldenChecker

    return GoldenChecker(update=pytestconfig.getoption("--update-golden"), golden_dir=golden_dir)

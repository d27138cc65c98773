"""Root conftest. The options, markers and verdict table live in the installed plugin
`etrm.testing.plugin` (pytest11 entry point), so that `etrm investigate` works the same
from an installed package as from this checkout. This file only sets the checkout's
defaults, in a way that still works without xdist or with plugin autoloading off."""
import os

import pytest

# Deterministic, one-thread-per-worker CPU runs regardless of the host.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The default run: two xdist workers (the CI machine has two cores).
DEFAULT_WORKERS = 2

if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):  # entry points off: load our plugin by hand
    pytest_plugins = ["etrm.testing.plugin"]


def pytest_configure(config: pytest.Config) -> None:
    from hypothesis import settings

    # Property tests: derandomised and without deadlines ("ci", registered by the plugin);
    # HYPOTHESIS_PROFILE=dev explores randomly.
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # Parallel unless the run chose otherwise (-n N, -p no:xdist), only collects, or
    # benchmarks (pytest-benchmark switches itself off under xdist). Workers run this hook
    # too and must not start workers of their own.
    if (config.pluginmanager.has_plugin("xdist") and not hasattr(config, "workerinput")
            and config.getoption("numprocesses", None) is None
            and not config.option.collectonly and not config.getoption("--runbenchmark")):
        config.option.numprocesses = DEFAULT_WORKERS

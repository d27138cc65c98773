"""pytest plugin of etrm, registered under the `pytest11` entry point.

It registers the markers, the flags that enable slow and benchmark tests (not an
`addopts -m` expression, which `pytest -m hypothesis1` would replace), and skips
`gpu` tests with a reason when CUDA is absent.
"""
from __future__ import annotations

import pytest

MARKERS = {
    "hypothesis1": "H1: does the pretrained TRM decoder load correctly?",
    "hypothesis2": "H2: do encoder gradients flow?",
    "hypothesis3": "H3: is the encoder output well formed?",
    "hypothesis4": "H4: are the training dynamics sane?",
    "hypothesis5": "H5: is the dataset right?",
    "hypothesis6": "H6: is the evaluator right?",
    "hypothesis7": "H7: is the encoder too weak?",
    "experiment1": "Experiment 1: frozen-decoder run, scenario A/B/C",
    "gpu": "needs CUDA; skipped with a reason when absent",
    "slow": "takes more than a few seconds; enabled by --runslow",
    "benchmark": "pytest-benchmark measurement; enabled by --runbenchmark, run without xdist (-n 0)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("etrm")
    group.addoption("--runslow", action="store_true", help="run tests marked slow")
    group.addoption("--runbenchmark", action="store_true", help="run tests marked benchmark")


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_slow = pytest.mark.skip(reason="slow test: pass --runslow to run it")
    skip_bench = pytest.mark.skip(reason="benchmark: pass --runbenchmark (and -n 0) to run it")
    skip_gpu = pytest.mark.skip(reason="CUDA is not available on this machine")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "benchmark" in item.keywords and not config.getoption("--runbenchmark"):
            item.add_marker(skip_bench)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


def _register_hypothesis_profiles() -> None:
    from hypothesis import HealthCheck, settings

    # Derandomised and without deadlines: torch calls vary in time on shared CI cores.
    settings.register_profile("ci", derandomize=True, deadline=None, max_examples=15,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", deadline=None, max_examples=20)
    settings.load_profile("ci")


_register_hypothesis_profiles()

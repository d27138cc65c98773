"""Suite-wide rules and shared fixtures of the shipped check modules (the artifact fixtures
come from the etrm plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etrm.checks.result import HYPOTHESES

_SUITE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects the very tests this guards against
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `etrm investigate` selects by hypothesis marker: an unmarked test would never run there.
    unmarked = [
        item.nodeid
        for item in items
        if _SUITE in Path(item.path).resolve().parents and not any(item.get_closest_marker(h) for h in HYPOTHESES)
    ]
    if unmarked:
        raise pytest.UsageError(
            f"{len(unmarked)} test(s) in {_SUITE} carry no hypothesis marker "
            f"({', '.join(HYPOTHESES)}): {', '.join(unmarked[:5])}"
        )


@pytest.fixture(scope="session")
def checkpoint_model(artifacts) -> etrm.suite.support.CheckpointModel:  # noqa: F821
    """The user's ETRM checkpoint behind the adapter, built by their code with --model-code
    (which imports and runs it), else by etrm's models; skips naming what to pass."""
    from etrm.suite.support import checkpoint_model as build

    return build(artifacts)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # One case per --model-config file (a folder gives each of its files); without the option, one
    # case that skips naming what to pass.
    if "model_config_file" in metafunc.fixturenames:
        from etrm.testing.plugin import run_artifacts

        files = run_artifacts(metafunc.config).model_config_files
        metafunc.parametrize(
            "model_config_file", files or [None], ids=[f.name for f in files] or ["no-model-config"], scope="module"
        )


@pytest.fixture(scope="module")
def model_code_case(model_config_file, artifacts) -> etrm.suite.support.ModelCodeCase:  # noqa: F821
    """The model of one --model-config file built by --model-code's code (which is imported and
    run) at --model-size, randomly initialised; skips naming what to pass."""
    from etrm.suite.support import model_code_case as build

    return build(artifacts, model_config_file)


@pytest.fixture(scope="session")
def h7_case(checkpoint_model, artifacts, pytestconfig) -> etrm.suite.h7_case.H7Case:  # noqa: F821
    """H7's headroom, gap and alignment measured once per process on the user's checkpoint."""
    from etrm.suite.h7_case import build_h7_case

    return build_h7_case(
        checkpoint_model.model,
        checkpoint_model.config,
        artifacts,
        tasks=pytestconfig.getoption("etrm_h7_tasks"),
        steps=pytestconfig.getoption("etrm_h7_steps"),
        act_steps=pytestconfig.getoption("etrm_h7_act_steps"),
        alpha=pytestconfig.getoption("etrm_h7_alpha"),
        source=artifacts.source("etrm_checkpoint"),
    )

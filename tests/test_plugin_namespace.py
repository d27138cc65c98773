"""etrm installed beside another project: pytest11 loads the plugin into that project's
runs too, so it must keep to its own names (`--etrm-*`, `etrm_slow`), skip only etrm's
tests, leave Hypothesis profiles alone and print nothing when no etrm test ran. The
repository's own `slow`/`benchmark`/`gpu` handling lives in the root conftest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy  # noqa: F401
import pytest
import torch  # noqa: F401  loaded once: pytester restores sys.modules after each test

pytest_plugins = ["pytester"]
ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

# A machine-learning project's conftest with the generic names etrm's plugin once took.
FOREIGN_CONFTEST = """
import pytest
from hypothesis import settings

def pytest_addoption(parser):
    parser.addoption("--device", default="cpu")
    parser.addoption("--data", default="data/")
    parser.addoption("--runslow", action="store_true")

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: this project's slow tests")
    settings.register_profile("ci", max_examples=3)
    settings.load_profile("ci")
"""
FOREIGN_TESTS = {
    "test_options.py": """
import pytest

def test_own_options(pytestconfig):
    assert (pytestconfig.getoption("--device"), pytestconfig.getoption("--data")) == ("cuda", "mine")
    assert pytestconfig.getoption("--runslow") is True

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.benchmark(group="sums")
def test_bench(benchmark):
    assert benchmark(sum, [1, 2]) == 3
""",
    "gpu/test_kernels.py": "def test_under_a_gpu_folder():\n    pass\n",
    "test_properties.py": """
from hypothesis import given, settings, strategies as st

examples = []

@given(st.integers())
def test_profile_in_force(x):
    examples.append(x)
    assert settings().max_examples == 3

def test_profile_ran_its_examples():
    assert settings.get_current_profile_name() == "ci" and 1 <= len(examples) <= 3
""",
}


def _foreign_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD") and not k.startswith("PYTEST_XDIST")
    }
    env["CI"] = "true"  # on CI, Hypothesis loads a profile named "ci" by itself
    return env


def test_a_foreign_project_runs_untouched_beside_etrm(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(FOREIGN_CONFTEST)
    for name, text in FOREIGN_TESTS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-rA",
            "-p",
            "no:cacheprovider",
            "--device",
            "cuda",
            "--data",
            "mine",
            "--runslow",
        ],
        cwd=tmp_path,
        env=_foreign_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    plugins = next(line for line in out.splitlines() if line.startswith("plugins:"))
    assert "etrm-" in plugins  # the plugin was loaded, through the entry point
    assert re.search(r"\b6 passed\b", out) and "skipped" not in out, out
    assert "etrm" not in out.replace(plugins, ""), out


PLAIN_TESTS = """
import pytest

def test_plain():
    pass

@pytest.mark.slow
def test_marked_slow():
    pass
"""


def _summary(result: pytest.RunResult) -> list[str]:
    # Without the header (platform, rootdir, plugins) and the timing.
    lines = [line for line in result.outlines if not line.startswith(("platform ", "rootdir:", "plugins:"))]
    return [re.sub(r" in [0-9.]+s", "", line) for line in lines]


def test_a_run_without_etrm_tests_prints_and_skips_nothing_of_etrm(pytester):
    pytester.makepyfile(PLAIN_TESTS)
    with_etrm = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA", "-n", "0")
    without = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA", "-n", "0", "-p", "no:etrm")
    with_etrm.assert_outcomes(passed=2)
    assert "--etrm-data" in pytester.runpytest_inprocess("--help").stdout.str()  # the plugin is there
    assert "--etrm-data" not in pytester.runpytest_inprocess("--help", "-p", "no:etrm").stdout.str()
    assert _summary(with_etrm) == _summary(without)


@pytest.mark.parametrize("flags, reason", [((), "pass --etrm-runslow"), (("--etrm-investigate",), "pass --runslow")])
def test_the_plugin_skips_only_its_own_slow_marker(pytester, flags, reason):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.etrm_slow
        def test_etrm_slow():
            pass

        @pytest.mark.slow
        def test_someone_elses_slow():
            pass
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0", "-rs", *flags)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED *.py:3: not run: slow check: {reason} to run it"])
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0", "--etrm-runslow").assert_outcomes(passed=2)


def test_the_root_conftest_skips_the_repository_tests_by_marker(pytester):
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.slow
        def test_slow():
            pass

        @pytest.mark.benchmark
        def test_bench():
            pass

        @pytest.mark.etrm_slow
        @pytest.mark.hypothesis1
        def test_suite_slow():
            pass

        @pytest.mark.gpu
        def test_cuda():
            import torch
            assert torch.cuda.is_available()

        def test_profile():
            from hypothesis import settings
            assert settings.get_current_profile_name() == "etrm-ci"
    """
    )
    (pytester.path / "gpu").mkdir()
    (pytester.path / "gpu" / "test_folder.py").write_text("def test_in_a_gpu_folder():\n    pass\n")
    gpu_skipped = 0 if torch.cuda.is_available() else 1
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0", "-rs", "--strict-markers")
    result.assert_outcomes(passed=3 - gpu_skipped, skipped=3 + gpu_skipped)
    result.stdout.fnmatch_lines_random(
        [
            "*slow test: pass --runslow to run it*",
            "*benchmark: pass --runbenchmark (and -n 0) to run it*",
            "*slow check: pass --etrm-runslow to run it*",
        ]
    )
    # One --runslow for the checkout's slow tests and the suite's.
    everything = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-n", "0", "--runslow", "--runbenchmark")
    everything.assert_outcomes(passed=6 - gpu_skipped, skipped=gpu_skipped)

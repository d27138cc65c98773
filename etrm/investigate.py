"""`etrm investigate`: run the shipped hypothesis suite on the bundled fixtures or on a
user's artifacts, print the verdict table and optionally write a report.

It runs `pytest --pyargs etrm.suite` in isolation from any checkout's configuration
(`-c` an empty config, the rootdir set to the installed package's parent), so it
behaves the same from a wheel as from the repository. Exit status: pytest's, i.e. 0
when no check failed and 1 when some did; a missing artifact or a `-m` that selects
no check is a usage error (2), an unusable metrics log for the report 1.

With `--baseline OLD.json` (an earlier run's `--verdict-json`) the changes against it follow
the table, one a line, and the status is the baseline gate's: 1 when this run has evidence, an
error or a number past its tolerance that the baseline lacks, 0 otherwise, even where the
baseline's evidence remains (docs/compare.md). A baseline that cannot be read is a usage error
(2), reported before any check runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

import etrm
from etrm.checks.result import HYPOTHESES
from etrm.cli import UsageError
from etrm.errors import int_at_least
from etrm.testing.artifacts import CLI_PREFIX, OPTIONS, Artifacts, add_artifact_options, plugin_args
from etrm.testing.plugin import BASELINE_FLAG, INVESTIGATE_FLAG

DEFAULT_SELECTION = " or ".join(HYPOTHESES)
SUITE = "etrm.suite"
# Checks at the official width spend their time in small matmuls that one thread runs nearly
# as fast as two: on two cores, two one-thread workers finished an investigation in 44 s
# against one two-thread process's 55 s (and never slower). More workers than this mostly
# duplicate model loads.
MAX_DEFAULT_WORKERS = 4


def default_workers(device: str) -> int:
    """xdist workers when -n is not given: one per core (up to MAX_DEFAULT_WORKERS) on the
    CPU with pytest-xdist installed, else 0 (in-process; on CUDA the workers would share one GPU)."""
    import importlib.util

    cores = os.cpu_count() or 1
    if device != "cpu" or cores < 2 or importlib.util.find_spec("xdist") is None:
        return 0
    return min(cores, MAX_DEFAULT_WORKERS)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "investigate",
        help="run the hypothesis checks and print a verdict per hypothesis",
        description=__doc__.split("\n\n")[0],
    )
    # The plugin's options under their short names (--data for the plugin's --etrm-data).
    add_artifact_options(p.add_argument, CLI_PREFIX)
    p.add_argument(
        "-m",
        dest="markexpr",
        metavar="EXPR",
        default=DEFAULT_SELECTION,
        help="pytest marker expression (default: every hypothesis and experiment1)",
    )
    p.add_argument("-k", dest="keyword", metavar="EXPR", help="pytest -k expression on test names, e.g. checkpoint")
    p.add_argument("--report", metavar="DIR", help="write DIR/report.md with the verdict and metric plots")
    p.add_argument(
        "--baseline",
        metavar="OLD.json",
        help="an earlier run's --verdict-json: list what changed after the table, and exit 1 only on new "
        "evidence, a new error or a number worse than its tolerance",
    )
    p.add_argument(
        "-n",
        dest="workers",
        metavar="N",
        type=int_at_least(0),
        help="pytest-xdist workers; 0 runs in this process (default: one per CPU core up to "
        f"{MAX_DEFAULT_WORKERS} when pytest-xdist is installed and the device is the CPU)",
    )
    p.add_argument(
        "--suite", default=SUITE, metavar="PACKAGE", help=f"Python package of check modules to run (default: {SUITE})"
    )
    p.set_defaults(func=run)


def pytest_args(args: argparse.Namespace, verdict_json: str | None) -> list[str]:
    """The pytest command line for `args`."""
    root = Path(etrm.__file__).resolve().parent.parent
    argv = [
        "--pyargs",
        args.suite,
        "-m",
        args.markexpr,
        "-p",
        "no:cacheprovider",
        # hydra-core's pytest plugin (0.3 s of imports per worker) is of no use to the checks.
        "-p",
        "no:hydra_pytest",
        # pytest's unraisable-exception plugin runs five full garbage collections as each
        # process ends, to report exceptions raised in __del__ as warnings: with torch and the
        # user's models in memory, about a second of the run (and 0.3 s a pass in a test
        # process that runs this command in-process). Nothing here reads those warnings.
        "-p",
        "no:unraisableexception",
        "--strict-markers",
        # An empty config and a fixed rootdir: a checkout's pyproject (addopts, testpaths)
        # must not change what an installed `etrm investigate` does.
        "-c",
        os.devnull,
        "--rootdir",
        str(root),
        "-o",
        "xfail_strict=true",
        # Only the suite's own conftest files: in a checkout (editable install) the
        # repository's root conftest would otherwise load, and with it its test defaults.
        *_confcutdir(args.suite),
        # Messages (skip reasons, errors) name the flags above, not the plugin's.
        INVESTIGATE_FLAG,
        # The CLI has imported etrm before pytest could mark the plugin's package for
        # assertion rewriting; the checks return results rather than assert, so that is fine.
        "-W",
        "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning",
        # torch's own warning when torch.compile is imported (used for key layouts only).
        "-W",
        "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
    ]
    argv += plugin_args({**vars(args), "etrm_verdict_json": verdict_json})
    if args.keyword:
        argv += ["-k", args.keyword]
    if getattr(args, "baseline", None):
        argv += [BASELINE_FLAG, str(Path(args.baseline).expanduser().resolve())]
    autoload_off = bool(os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"))
    if autoload_off:  # else the pytest11 entry point loads it; loading it twice is an error
        argv += ["-p", "etrm.testing.plugin"]
    workers = workers_for(args)
    if workers:
        # loadgroup: each test its own unit of work, so the few long checks spread over the
        # workers, but the tests marked xdist_group (those sharing a costly measurement of the
        # user's model) on one worker, so that measurement runs once (the scheduler is
        # etrm.testing.worker_schedule's, which also starts the etrm_costly tests first: xdist's
        # own loses the groups under pytest 9.2).
        argv += (["-p", "xdist.plugin"] if autoload_off else []) + ["-n", str(workers), "--dist", "loadgroup"]
    return argv


def workers_for(args: argparse.Namespace) -> int:
    return default_workers(args.etrm_device) if args.workers is None else args.workers


def _confcutdir(suite: str) -> list[str]:
    import importlib.util

    try:
        spec = importlib.util.find_spec(suite)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return ["--confcutdir", locations[0]] if locations else []  # else pytest reports the bad --suite


def _given(args: argparse.Namespace) -> dict[str, str]:
    return {
        name: getattr(args, f"etrm_{name}")
        for name, (stem, *_) in OPTIONS.items()
        if stem is not None and getattr(args, f"etrm_{name}") is not None
    }


def run(args: argparse.Namespace) -> int:
    # The plugin resolves them again inside pytest; here a mistyped path is one error line
    # of this command (etrm.cli.main) before any check runs.
    artifacts = Artifacts.resolve(_given(args), device=args.etrm_device, prefix=CLI_PREFIX)
    if args.baseline:
        _check_baseline(Path(args.baseline).expanduser())
    with tempfile.TemporaryDirectory(prefix="etrm-investigate-") as tmp:
        # The report needs the verdict: ask pytest for the JSON even when the user did not.
        verdict_json = args.etrm_verdict_json or (str(Path(tmp) / "verdict.json") if args.report else None)
        if verdict_json:
            verdict_json = str(Path(verdict_json).expanduser().resolve())
        workers = workers_for(args)
        if workers > 1:  # workers inherit it; the user's own setting wins
            os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        status = int(pytest.main(pytest_args(args, verdict_json)))
        if status == pytest.ExitCode.NO_TESTS_COLLECTED:
            raise UsageError(f"no checks selected by -m {args.markexpr!r} in {args.suite}")
        if args.report and status in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            _write_report(args, artifacts, Path(verdict_json))
    return status


def _check_baseline(path: Path) -> None:
    """Read the baseline once before pytest starts, so a bad one is this command's one error line."""
    from etrm.testing.verdict import read_verdict_json

    try:
        read_verdict_json(path)
    except OSError as err:
        raise UsageError(f"--baseline {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise UsageError(f"--baseline {err}") from None


def _write_report(args: argparse.Namespace, artifacts: Artifacts, verdict_json: Path) -> None:
    from etrm.report import PLOTS_MISSING, ReportError, write_report
    from etrm.testing.verdict import VerdictTable

    verdict = VerdictTable.from_dict(json.loads(verdict_json.read_text()))
    used = {
        name: f"`{getattr(artifacts, name)}` ({artifacts.source(name)})"
        for name, (stem, *_) in OPTIONS.items()
        if stem is not None and getattr(artifacts, name) is not None
    }
    used["device"] = f"`{args.etrm_device}`"
    try:
        target = write_report(Path(args.report).expanduser().resolve(), verdict, artifacts.metrics_log, used)
    except ReportError as err:  # the verdict above stands; etrm.cli.main prints this line
        raise ReportError(f"report not written: {err}") from err
    if PLOTS_MISSING in target.read_text():
        print(f"etrm investigate: {PLOTS_MISSING}", file=sys.stderr)
    print(f"etrm investigate: report written to {target}")

"""`etrm compare`: investigations side by side, and what changed against the first.

    etrm compare main.json pr.json [more.json ...] [--labels main,pr,...] [--report DIR]

Each verdict JSON (`etrm investigate --verdict-json`) is a column of a hypotheses x runs
table; a cell holds the row's verdict and the hypothesis's decisive number
(`etrm.testing.decisive`). The first run is the baseline: each later run lists its changes
against it, one a line (`etrm.testing.compare`: new evidence, evidence gone, a number past its
tolerance, a new error), after saying whether it investigated another model or data.

`etrm experiment1` run folders (or their `metrics.jsonl`) are compared in a table of their own:
the scenario decided from each log, the final loss, the encoder's pre-clip gradient norm and the
best evaluation pass@1; `--report` overlays their loss and accuracy curves on one figure.

`--report DIR` writes DIR/compare.md with the tables and plots (`etrm.compare_report`).
Exit status 0 when the comparison was printed (it reports, `etrm investigate --baseline` gates);
2 for a path or option that cannot be used, 1 for a file that cannot be read (a malformed or
other-version verdict JSON, an unreadable metrics log), named in one line.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from etrm.checks.result import HYPOTHESES
from etrm.errors import UsageError
from etrm.metrics_log import read_metrics_log
from etrm.testing.compare import Change, changes, identity_notes
from etrm.testing.decisive import DECISIVE, decisive_value
from etrm.testing.verdict import VerdictTable, read_verdict_json

LOG_NAME = "metrics.jsonl"  # etrm.experiment1.loop.LOG_NAME (that module imports torch)
# Short tags a later run's cell carries for its changes against the baseline.
TAGS = {"new evidence": "NEW EVIDENCE", "evidence gone": "evidence gone", "worse": "WORSE", "better": "better"}
TAGS |= {"new error": "NEW ERROR", "verdict": "changed"}


@dataclass
class Investigation:
    label: str
    path: Path
    table: VerdictTable


@dataclass
class ExperimentRun:
    """An `etrm experiment1` run, from its metrics log."""

    label: str
    path: Path
    scenario: str
    final_loss: float | None
    encoder_grad_norm: float | None
    grad_norm_kind: str  # "pre-clip", "post-clip" or "" (not logged)
    best_pass1: float | None
    steps: int
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # key -> (steps, values)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare investigations (verdict JSONs) and experiment1 runs side by side",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a verdict JSON, or an etrm experiment1 run folder (or its metrics.jsonl)",
    )
    p.add_argument("--labels", metavar="A,B,...", help="one column name per RUN, comma-separated (default: file names)")
    p.add_argument("--report", metavar="DIR", help="write DIR/compare.md with the tables and plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    labels = _labels(args.runs, args.labels)
    investigations, experiments = [], []
    for label, given in zip(labels, args.runs):
        path = Path(given).expanduser()
        if not path.exists():
            raise UsageError(f"{given}: not found")
        if path.is_dir() or path.suffix == ".jsonl":
            experiments.append(read_experiment_run(label, path))
        else:
            investigations.append(Investigation(label, path, read_verdict_json(path)))
    lines = []
    if investigations:
        lines += verdict_grid_lines(investigations)
        for later in investigations[1:]:
            lines += ["", *change_lines(investigations[0], later)]
    if experiments:
        lines += ([""] if lines else []) + experiment_lines(experiments)
    print("\n".join(lines))
    if args.report:
        from etrm.compare_report import write_compare_report

        sections = [change_lines(investigations[0], later) for later in investigations[1:]]
        target = write_compare_report(
            Path(args.report).expanduser(),
            investigations,
            grid(investigations) if investigations else None,
            sections,
            experiments,
            experiment_rows(experiments),
        )
        print(f"etrm compare: report written to {target}")
    return 0


def _labels(runs: list[str], given: str | None) -> list[str]:
    if given is not None:
        labels = [label.strip() for label in given.split(",")]
        if len(labels) != len(runs) or not all(labels):
            raise UsageError(f"--labels names {len(labels)} runs, but {len(runs)} were given")
        if len(set(labels)) < len(labels):
            raise UsageError(f"--labels {given}: each run needs its own label")
        return labels
    paths = [Path(r).expanduser().resolve() for r in runs]
    labels = [p.stem if p.suffix in (".json", ".jsonl") else p.name for p in paths]
    for i, (path, label) in enumerate(zip(paths, labels)):  # a shared name gets its folder too
        if labels.count(label) > 1:
            labels[i] = f"{path.parent.name}/{label}"
    return [label if labels.count(label) == 1 else f"{label}#{i + 1}" for i, label in enumerate(labels)]


# --- investigations ---------------------------------------------------------------------------


def cell(investigation: Investigation, hypothesis: str, found: list[Change] | None = None) -> str:
    """A grid cell: the verdict, the decisive number, and the tags of the changes against the baseline."""
    rows = {r.hypothesis: r for r in investigation.table.rows}
    if hypothesis not in rows:
        return "not run"
    text = rows[hypothesis].shown_verdict
    if hypothesis in DECISIVE:
        value = decisive_value(investigation.table, hypothesis)
        if value is None or not text.startswith(f"{value.shown}: "):  # experiment1's verdict is its scenario
            text += f": {value.shown if value else 'n/a'}"
    tags = dict.fromkeys(TAGS[c.kind] for c in found or () if c.hypothesis == hypothesis)
    return text + "".join(f" [{tag}]" for tag in tags)


def grid(investigations: list[Investigation]) -> tuple[list[str], list[list[str]]]:
    """(column headers, rows of cells) of the hypotheses x runs table; the first column is the hypothesis."""
    found = [changes(investigations[0].table, inv.table) if i else [] for i, inv in enumerate(investigations)]
    present = {r.hypothesis for inv in investigations for r in inv.table.rows}
    header = [
        "hypothesis",
        *(f"{inv.label} (baseline)" if i == 0 else inv.label for i, inv in enumerate(investigations)),
    ]
    rows = [[h, *(cell(inv, h, f) for inv, f in zip(investigations, found))] for h in HYPOTHESES if h in present]
    return header, rows


def verdict_grid_lines(investigations: list[Investigation]) -> list[str]:
    header, rows = grid(investigations)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def change_lines(baseline: Investigation, later: Investigation) -> list[str]:
    """What changed in `later` against the baseline: identity notes first, then one line per change."""
    found = changes(baseline.table, later.table)
    lines = [f"{later.label} against {baseline.label}:"]
    lines += [f"  {n}" for n in identity_notes(baseline.table.identity, later.table.identity, baseline.label)]
    lines += [f"  {c.line()}" for c in found] or ["  no change"]
    return lines


# --- experiment1 runs ---------------------------------------------------------------------------


def read_experiment_run(label: str, path: Path) -> ExperimentRun:
    """An experiment1 run folder (its metrics.jsonl) or log, summarised; the scenario is decided
    by the check `pytest -m experiment1 --metrics-log` runs."""
    from etrm.checks.experiment1 import WINDOW, decide_scenario

    log = path / LOG_NAME if path.is_dir() else path
    if not log.is_file():
        raise UsageError(f"{path}: neither a verdict JSON nor an experiment1 run folder (no {LOG_NAME})")
    records = read_metrics_log(log)
    result = decide_scenario(records)
    scenario = str(result.numbers.get("scenario") or f"{result.status}: {result.message}")
    train = [r for r in records if "train/lm_loss" in r]
    last = train[-max(1, int(len(train) * WINDOW)) :]
    norm, kind = None, ""
    for key, name in (("grad/encoder_norm_preclip", "pre-clip"), ("grad/encoder_norm_postclip", "post-clip")):
        values = [float(r[key]) for r in last if _finite(r.get(key))]
        if values:
            norm, kind = median(values), name
            break
    evals = [float(r["eval/ARC/pass@1"]) for r in records if _finite(r.get("eval/ARC/pass@1"))]
    curves = {}
    for key in ("train/lm_loss", "train/accuracy", "eval/ARC/pass@1"):
        points = [(float(r["step"]), float(r[key])) for r in records if _finite(r.get(key))]
        if points:
            curves[key] = ([s for s, _ in points], [v for _, v in points])
    return ExperimentRun(
        label,
        log,
        scenario,
        float(train[-1]["train/lm_loss"]) if train else None,
        norm,
        kind,
        max(evals) if evals else None,
        int(train[-1]["step"]) if train else 0,
        curves,
    )


def experiment_rows(runs: list[ExperimentRun]) -> tuple[list[str], list[list[str]]]:
    header = ["run", "scenario", "steps", "final LM loss", "encoder grad norm (median, last 20%)", "best eval pass@1"]
    rows = [
        [
            r.label,
            r.scenario,
            str(r.steps),
            _num(r.final_loss),
            f"{_num(r.encoder_grad_norm)} ({r.grad_norm_kind})" if r.grad_norm_kind else "not logged",
            _num(r.best_pass1),
        ]
        for r in runs
    ]
    return header, rows


def experiment_lines(runs: list[ExperimentRun]) -> list[str]:
    header, rows = experiment_rows(runs)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["experiment1 runs:"] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"

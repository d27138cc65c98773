"""Markdown report of an investigation: the verdict table and plots of a training-metrics log.

The metrics log is JSON lines written by the training step, one object per step
(`step`, `train/*`, `grad/<part>_norm_preclip|postclip`, `encoder/*`, `lr`) plus
evaluation lines (`eval/...`); not every line has every key. Plots need matplotlib
(`pip install 'etrm[plots]'`); without it the report says so and keeps the rest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from etrm.testing.verdict import VerdictTable

# (file name, title, panels); a panel is (title, keys, log scale). Panels and figures
# whose keys are all absent from the log are left out, and the report says so.
FIGURES: tuple[tuple[str, str, tuple[tuple[str, tuple[str, ...], bool], ...]], ...] = (
    (
        "losses.png",
        "Training losses",
        (
            ("LM loss", ("train/lm_loss",), False),
            ("Q-halt loss", ("train/q_halt_loss",), False),
            ("KL loss", ("train/kl_loss",), False),
            ("learning rate", ("lr", "lr/*"), False),
        ),
    ),
    (
        "grad_norms.png",
        "Gradient norms, pre- vs post-clip",
        tuple(
            (part, (f"grad/{part}_norm_preclip", f"grad/{part}_norm_postclip"), True)
            for part in ("encoder", "decoder", "total")
        ),
    ),
    (
        "encoder_diversity.png",
        "Encoder output diversity",
        (
            ("diversity", ("encoder/cross_sample_std", "encoder/within_task_std", "encoder/token_std"), False),
            ("output statistics", ("encoder/output_mean", "encoder/output_std", "encoder/output_norm"), False),
        ),
    ),
    (
        "accuracy.png",
        "Accuracy",
        (
            ("training", ("train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy"), False),
            ("evaluation", ("eval/*",), False),
        ),
    ),
)
PLOTS_MISSING = "plots skipped: matplotlib is not installed (pip install 'etrm[plots]')"


class ReportError(ValueError):
    """The metrics log is unusable; the message names the file and the line or step."""


@dataclass(frozen=True)
class MetricsLog:
    path: Path
    lines: list[dict[str, float]]  # numeric values only (null -> NaN), each with "step"
    notes: dict[str, str] = field(default_factory=dict)  # text values (e.g. which checkpoint was loaded)

    def keys(self) -> list[str]:
        return sorted({k for line in self.lines for k in line if k != "step"})

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of the lines that have `key`, in file order."""
        rows = [(line["step"], line[key]) for line in self.lines if key in line]
        data = np.array(rows, dtype=np.float64).reshape(-1, 2)
        return data[:, 0], data[:, 1]


def read_metrics_log(path: str | Path) -> MetricsLog:
    """Read a metrics log (parsed by `etrm.training.read_metrics_log`, which owns the format)
    and check that every value is a number or null; anything else names file, step and key."""
    from etrm.training import MetricsLogError
    from etrm.training import read_metrics_log as read_records

    try:
        records = read_records(path)
    except MetricsLogError as err:
        raise ReportError(str(err)) from None
    if not records:
        raise ReportError(f"{path}: metrics log has no lines")
    lines, notes = [], {}
    for record in records:
        values = {}
        for key, value in record.items():
            if value is None:
                value = math.nan
            if isinstance(value, str):  # run information, not a metric: shown as text
                notes.setdefault(key, value)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReportError(
                    f"{path}, step {record['step']}: {key!r} must be a number, text or null, got {value!r}"
                )
            values[key] = value if key == "step" else float(value)
        lines.append(values)
    return MetricsLog(Path(path), lines, notes)


def summarise(log: MetricsLog) -> list[tuple[str, int, float, float, float, float]]:
    """Per key: number of lines, first, last, min and max value (NaN ignored for min/max)."""
    rows = []
    for key in log.keys():
        _, values = log.series(key)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (math.nan, math.nan)
        rows.append((key, int(values.size), float(values[0]), float(values[-1]), lo, hi))
    return rows


def plot_metrics(log: MetricsLog, out_dir: str | Path) -> list[tuple[str, str]]:
    """Write the PNG figures that the log has data for; returns (file name, title) pairs.
    Raises ImportError when matplotlib is missing."""
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend state

    out_dir = Path(out_dir)
    written = []
    keys = log.keys()
    for filename, title, panels in FIGURES:
        present = [(name, _expand(wanted, keys), log_scale) for name, wanted, log_scale in panels]
        present = [(name, found, log_scale) for name, found, log_scale in present if found]
        if not present:
            continue
        ncols = len(present) if len(present) <= 3 else 2
        nrows = -(-len(present) // ncols)
        height = 3.2 * nrows + 0.5
        fig = Figure(figsize=(5.0 * ncols, height))
        # Fixed margins instead of a layout engine, which would draw every figure twice.
        fig.subplots_adjust(
            left=0.1 / ncols**0.5, right=0.98, bottom=0.45 / height, top=1 - 0.55 / height, wspace=0.3, hspace=0.45
        )
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(present) :]:
            ax.set_visible(False)
        for ax, (name, found, log_scale) in zip(axes, present):
            values_seen = []
            for key in found:
                steps, values = log.series(key)
                # NaN marks an undefined value (e.g. no two samples of one task): skip the
                # point, keep the line through its neighbours.
                keep = np.isfinite(values)
                ax.plot(steps[keep], values[keep], marker=".", markersize=3 if steps.size > 50 else 6, label=key)
                values_seen.append(values[keep])
            if log_scale:
                _log_axis(ax, np.concatenate(values_seen))
            ax.set_title(name)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(title)
        fig.savefig(out_dir / filename, dpi=100)
        written.append((filename, title))
    return written


def write_report(
    out_dir: str | Path,
    verdict: VerdictTable | None,
    metrics_log: str | Path | None,
    artifacts: Mapping[str, str] | None = None,
) -> Path:
    """Write `<out_dir>/report.md` (+ PNG plots when a metrics log and matplotlib are there).
    `artifacts` maps names to markdown descriptions of what the checks ran on."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# etrm investigation report", ""]
    if artifacts:
        md += ["## Artifacts", ""] + [f"- {name}: {value}" for name, value in artifacts.items()] + [""]
    md += ["## Verdict", ""]
    if verdict is None or not verdict.rows:
        md += ["No hypothesis or experiment checks ran.", ""]
    else:
        md += [verdict.format_markdown()]
    from etrm.report.h7 import h7_section

    md += h7_section(verdict, out_dir, PLOTS_MISSING)
    md += ["## Training metrics", ""]
    if metrics_log is None:
        md += ["No metrics log (pass `--metrics-log PATH`).", ""]
    else:
        log = read_metrics_log(metrics_log)
        md += [f"From `{log.path}`: {len(log.lines)} lines.", ""]
        md += [f"- {key}: `{value}`" for key, value in log.notes.items()] + ([""] if log.notes else [])
        try:
            figures = plot_metrics(log, out_dir)
        except ImportError:
            md += [f"*{PLOTS_MISSING}*", ""]
        else:
            for filename, title in figures:
                md += [f"### {title}", "", f"![{title}]({filename})", ""]
            missing = [title for filename, title, _ in FIGURES if filename not in {f for f, _ in figures}]
            if missing:
                md += [f"No data in the log for: {', '.join(missing)}.", ""]
        md += ["### Summary", "", "| metric | lines | first | last | min | max |", "|---|---:|---:|---:|---:|---:|"]
        md += [
            f"| {key} | {n} | {_num(a)} | {_num(b)} | {_num(lo)} | {_num(hi)} |"
            for key, n, a, b, lo, hi in summarise(log)
        ]
        md.append("")
    target = out_dir / "report.md"
    target.write_text("\n".join(md))
    return target


def _expand(wanted: Sequence[str], keys: Sequence[str]) -> list[str]:
    found = []
    for key in wanted:
        if key.endswith("*"):
            found += [k for k in keys if k.startswith(key[:-1])]
        elif key in keys:
            found.append(key)
    return found


def _log_axis(ax: Any, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if not positive.size:
        return
    if finite.size == positive.size:
        ax.set_yscale("log")
    else:
        # A zero norm (a blocked gradient) must stay visible, which a log axis would hide.
        ax.set_yscale("symlog", linthresh=float(positive.min()))


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"

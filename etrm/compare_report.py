"""`etrm compare --report DIR`: DIR/compare.md with the comparison's tables and its plots.

Figures (matplotlib, Agg; without it the report says so and keeps the tables):
- `verdict_grid.png`: runs x hypotheses, each cell coloured by its verdict and labelled with it;
- `h7_headroom.png`: per run, H7's headroom with its bootstrap interval where recorded (a point
  without bars where the run recorded no interval);
- `experiment1_curves.png`: the experiment1 runs' LM loss and accuracy (training accuracy and
  evaluation pass@1) overlaid, one colour per run, as W&B's panels show them.
"""

from __future__ import annotations

from pathlib import Path

from etrm.report import PLOTS_MISSING
from etrm.testing.compare import changes
from etrm.testing.decisive import DECISIVE, decisive_value

REPORT = "compare.md"
GRID, H7, CURVES = "verdict_grid.png", "h7_headroom.png", "experiment1_curves.png"
# Cell colour by what the verdict means (scenario letters for experiment1).
COLOURS = {
    "no evidence": "#b7e1b0",
    "evidence found": "#f4a6a6",
    "inconclusive": "#dddddd",
    "error": "#f7c77e",
    "not run": "#ffffff",
    "A": "#b7e1b0",
    "C": "#f7e08a",
    "B": "#f4a6a6",
    "pipeline failed": "#f4a6a6",
}


Table = tuple[list[str], list[list[str]]]  # (header, rows of cells)


def write_compare_report(
    out: Path,
    investigations: list,
    verdict_grid: Table | None,
    change_sections: list[list[str]],
    experiments: list,
    experiment_table: Table,
) -> Path:
    """`investigations` (label, path, table) and `experiments` (label, curves) are etrm.compare's,
    with the tables it printed: the grid, one change section per later run, the experiment runs."""
    out.mkdir(parents=True, exist_ok=True)
    md = ["# etrm compare", ""]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        md += [f"_{PLOTS_MISSING}_", ""]
    if investigations:
        md += _investigation_section(out, investigations, verdict_grid, change_sections, plt)
    if experiments:
        md += _experiment_section(out, experiments, experiment_table, plt)
    target = out / REPORT
    target.write_text("\n".join(md) + "\n")
    return target


def _investigation_section(
    out: Path, investigations: list, verdict_grid: Table, change_sections: list[list[str]], plt
) -> list[str]:
    header, rows = verdict_grid
    md = [
        "## Verdicts",
        "",
        f"Baseline: **{investigations[0].label}**. Each cell: the verdict, then the decisive number.",
    ]
    md += ["", _table(header, rows), ""]
    md += ["### Changes against the baseline", ""]
    for first, *rest in change_sections:
        md += [f"**{_md(first)}**", "", *(f"- {_md(line.strip())}" for line in rest), ""]
    md += ["### What each run investigated", "", _table(*_identity_rows(investigations)), ""]
    md += ["### Decisive numbers and their tolerance", "", _table(*_decisive_rows()), ""]
    if plt is not None:
        _plot_grid(out / GRID, investigations, [r[0] for r in rows], plt)
        md += [f"![verdict grid]({GRID})", ""]
        if _plot_h7(out / H7, investigations, plt):
            md += [f"![H7 headroom per run]({H7})", ""]
    return md


def _identity_rows(investigations: list) -> tuple[list[str], list[list[str]]]:
    header = ["run", "file", "command", "etrm", "started", "device", "artifacts (yours)"]
    rows = []
    for inv in investigations:
        ident = inv.table.identity
        yours = [
            f"{a['name']} `{a['path']}`" + (f" sha256 {a['sha256'][:12]}" if a.get("sha256") else "")
            for a in ident.get("artifacts", [])
            if a.get("source") == "user"
        ]
        rows.append(
            [
                inv.label,
                f"`{inv.path}`",
                f"`{ident.get('command', 'n/a')}`",
                str(ident.get("etrm_version", "n/a")),
                str(ident.get("started", "n/a")),
                f"{ident.get('device', 'n/a')} ({ident.get('device_name', '?')})",
                "<br>".join(yours) or ("bundled fixtures" if ident else "not recorded (verdict JSON version 3)"),
            ]
        )
    return header, rows


def _decisive_rows() -> tuple[list[str], list[list[str]]]:
    header = ["hypothesis", "check", "number", "worse when", "noise tolerance"]
    rows = [
        [d.hypothesis, d.check, d.label, "higher" if d.worse_is_higher else "lower", d.tolerance]
        for d in DECISIVE.values()
    ]
    return header, rows


def _experiment_section(out: Path, runs: list, table: Table, plt) -> list[str]:
    md = ["## experiment1 runs", "", _table(*table), ""]
    if plt is not None and any(r.curves for r in runs):
        _plot_curves(out / CURVES, runs, plt)
        md += [f"![loss and accuracy curves]({CURVES})", ""]
    return md


# --- plots -----------------------------------------------------------------------------------


def _colour(verdict: str) -> str:
    """The colour of a row's verdict: by meaning, experiment1's by its scenario letter."""
    from etrm.testing.verdict import FINDINGS

    meaning = {text: key for finding in FINDINGS.values() for key, text in finding.items()}  # the premise's words
    verdict = meaning.get(verdict, verdict)
    if verdict[1:3] == ": " and verdict[:1] in "ABC":
        return COLOURS[verdict[:1]]
    return COLOURS.get(verdict, COLOURS["inconclusive"])


def _plot_grid(path: Path, investigations: list, hyps: list[str], plt) -> None:
    runs = [inv.label for inv in investigations]
    fig, ax = plt.subplots(figsize=(2.2 + 2.6 * len(runs), 0.9 + 0.55 * len(hyps)))
    for x, inv in enumerate(investigations):
        verdicts = {r.hypothesis: r for r in inv.table.rows}
        flagged = {c.hypothesis for c in changes(investigations[0].table, inv.table) if c.gating} if x else set()
        for y, hyp in enumerate(hyps):
            row = verdicts.get(hyp)
            verdict = row.verdict if row else "not run"
            ax.add_patch(plt.Rectangle((x, y), 1, 1, color=_colour(verdict), ec="white", lw=2))
            label = (verdict[:1] if verdict[1:3] == ": " else verdict) + ("*" if row and row.bundled_only else "")
            label += "\n(new evidence / worse)" if hyp in flagged else ""
            ax.text(
                x + 0.5, y + 0.5, label, ha="center", va="center", fontsize=8, weight="bold" if hyp in flagged else None
            )
    ax.set_xlim(0, len(runs))
    ax.set_ylim(len(hyps), 0)
    ax.set_xticks([x + 0.5 for x in range(len(runs))], runs, fontsize=9)
    ax.set_yticks([y + 0.5 for y in range(len(hyps))], hyps, fontsize=9)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title("verdict per hypothesis and run (* bundled fixtures only)", fontsize=10, pad=24)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_h7(path: Path, investigations: list, plt) -> bool:
    values = [(inv.label, decisive_value(inv.table, "hypothesis7")) for inv in investigations]
    if not any(v for _, v in values):
        return False
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(values), 3.6))
    for x, (_, value) in enumerate(values):
        if value is None:
            ax.text(x, 0, "not measured", ha="center", va="bottom", fontsize=8, rotation=90)
        elif value.low is not None:
            ax.errorbar(
                x, value.value, yerr=[[value.value - value.low], [value.high - value.value]], fmt="o", capsize=6
            )
        else:
            ax.plot(x, value.value, "s", color="grey")
            ax.annotate(
                "no interval", (x, value.value), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7
            )
    intervals = any(v and v.low is not None for _, v in values)
    ax.set_xticks(range(len(values)), [label for label, _ in values], fontsize=9)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("mean relative loss gain" if intervals else "headroom (loss per task)")
    ax.set_title("H7 context headroom per run" + (" with bootstrap interval" if intervals else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_curves(path: Path, runs: list, plt) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(runs):
        colour = f"C{i}"
        if "train/lm_loss" in run.curves:
            loss_ax.plot(*run.curves["train/lm_loss"], color=colour, label=run.label)
        if "train/accuracy" in run.curves:
            acc_ax.plot(*run.curves["train/accuracy"], color=colour, label=f"{run.label} train accuracy")
        if "eval/ARC/pass@1" in run.curves:
            acc_ax.plot(
                *run.curves["eval/ARC/pass@1"], "o--", color=colour, label=f"{run.label} eval pass@1", markersize=4
            )
    loss_ax.set(title="train/lm_loss", xlabel="step", ylabel="loss")
    acc_ax.set(title="accuracy", xlabel="step", ylabel="fraction")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_md, header)) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(_md(c) if not c.startswith("`") else c.replace("|", "\\|") for c in r) + " |" for r in rows
    ]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

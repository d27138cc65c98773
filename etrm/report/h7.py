"""The report's H7 section: per held-out task, the test-query loss with (a) the encoder's
context, (b) the optimised one and (c) the TRM's embedding, and the generalisation gap, read
from the checks recorded in the verdict (`context_headroom`, `generalisation_gap`); and ARC
pass@K with and without a test-time context search, where the metrics log measured it (the
verdict's `context_search`)."""

from __future__ import annotations

from pathlib import Path

from etrm.testing.verdict import VerdictTable

FIGURE = "h7_headroom.png"
CONTEXTS = (("encoder_loss", "(a) encoder"), ("optimised_loss", "(b) optimised"), ("trm_loss", "(c) TRM embedding"))


def recorded(verdict: VerdictTable | None, name: str) -> dict | None:
    """The numbers of the first recorded check called `name` that measured something."""
    for test in verdict.tests if verdict else ():
        for check in test.checks:
            if check["name"] == name and not check.get("negative_control") and check["numbers"]:
                return check["numbers"]
    return None


def per_task(numbers: dict) -> dict[str, dict[str, float]]:
    tasks: dict[str, dict[str, float]] = {}
    for key, value in numbers.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "task" and isinstance(value, float):
            tasks.setdefault(parts[1], {})[parts[2]] = value
    return tasks


def context_search_lines(block: dict) -> list[str]:
    """A table of each logged evaluation's pass@K with the encoder's contexts and the searched ones."""
    evaluations = block.get("evaluations") or []
    if not evaluations:
        return []
    ks = sorted({k for e in evaluations for k in e["searched"]}, key=lambda k: int(k.split("@")[1]))
    head = [f"encoder {k}" for k in ks] + [f"searched {k}" for k in ks]
    md = [
        f"ARC pass@K with a test-time context search ({evaluations[-1]['steps']} steps on each test "
        f"puzzle's demonstrations, never its query), from `{block['metrics_log']}`:",
        "",
        "| step | " + " | ".join(head) + " | puzzles lowered |",
        "|---:|" + "---:|" * (len(head) + 1),
    ]
    for e in evaluations:
        values = [e["encoder"].get(k) for k in ks] + [e["searched"][k] for k in ks]
        shown = " | ".join("–" if v is None else f"{v:.4g}" for v in values)
        md.append(f"| {e['step']} | {shown} | {e['puzzles_lowered']} of {e['puzzles']} |")
    return [*md, ""]


def h7_section(verdict: VerdictTable | None, out_dir: Path, plots_missing: str) -> list[str]:
    """Markdown lines (and the figure, with matplotlib; else the `plots_missing` note); none when no
    headroom was measured."""
    searched = context_search_lines(verdict.context_search if verdict else {})
    headroom, gap = recorded(verdict, "context_headroom"), recorded(verdict, "generalisation_gap")
    if headroom is None or not per_task(headroom):
        return ["## Hypothesis 7: context headroom", "", *searched] if searched else []
    md = [
        "## Hypothesis 7: context headroom",
        "",
        *searched,
        f"{headroom['tasks']} held-out tasks, {headroom['steps']} optimisation steps, scored after "
        f"{headroom.get('act_steps', 'all')} ACT steps; "
        f"(c): {headroom['trm_embedding']}.",
        "",
    ]
    if "p_value" in headroom:
        md += [
            f"Another context is clearly better on {headroom['tasks_steered']} of {headroom['tasks']} tasks: one-sided "
            f"sign test p = {headroom['p_value']:.3g} (alpha {headroom['alpha']:g}, {headroom['tasks_needed']} tasks "
            f"needed to reach it). Mean relative loss gain {headroom['mean_relative_gain']:.3g}, "
            f"{headroom['ci_level']:.0%} bootstrap interval [{headroom['headroom_ci_low']:.3g}, "
            f"{headroom['headroom_ci_high']:.3g}]; the search lowered the demonstrations' loss on "
            f"{headroom['tasks_search_lowered']} tasks.",
            "",
        ]
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return md + [f"*{plots_missing}*", ""]
    tasks = per_task(headroom)
    fig = Figure(figsize=(15, 3.8))
    axes = fig.subplots(1, 3)
    names = sorted(tasks)
    width = 0.8 / len(CONTEXTS)
    for i, (key, label) in enumerate(CONTEXTS):
        xs = [j + (i - 1) * width for j, t in enumerate(names) if key in tasks[t]]
        ys = [tasks[t][key] for t in names if key in tasks[t]]
        if ys:
            axes[0].bar(xs, ys, width, label=label)
    axes[0].set_xticks(range(len(names)), names, rotation=30, fontsize="small")
    axes[0].set_ylabel("test-query loss")
    axes[0].set_title("per task: (a) / (b) / (c)")
    axes[0].legend(fontsize="small")
    if gap is not None:
        axes[1].bar(
            ["training tasks", "held-out tasks"],
            [gap["train_loss"], gap["heldout_loss"]],
            color=["tab:gray", "tab:red"],
        )
        axes[1].set_title(f"generalisation gap {gap['gap_ratio']:.2f}x, confusion {gap['confusion_rate']:.0%}")
        axes[1].set_ylabel("loss with the encoder's context")
    else:
        axes[1].set_visible(False)
    _gain_panel(axes[2], headroom, tasks, names)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.25, top=0.88, wspace=0.3)
    fig.savefig(out_dir / FIGURE, dpi=100)
    return md + [f"![H7 context headroom and generalisation gap]({FIGURE})", ""]


def _gain_panel(ax, headroom: dict, tasks: dict, names: list[str]) -> None:
    """Per task the relative loss gain of the best other context, and their mean with its interval."""
    gains = [tasks[t].get("relative_gain") for t in names]
    if "headroom_ci_low" not in headroom or None in gains:
        ax.set_visible(False)
        return
    ax.bar(range(len(names)), gains, color="tab:blue", alpha=0.6, label="per task")
    mean, low, high = headroom["mean_relative_gain"], headroom["headroom_ci_low"], headroom["headroom_ci_high"]
    ax.errorbar(
        [len(names)],
        [mean],
        yerr=[[mean - low], [high - mean]],
        fmt="o",
        color="black",
        capsize=6,
        label="mean, interval",
    )
    ax.axhline(0.25, color="tab:red", linestyle="--", linewidth=1, label='"clearly better" margin')
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.set_xticks(range(len(names) + 1), [*names, "mean"], rotation=30, fontsize="small")
    ax.set_ylabel("relative loss gain over (a)")
    ax.set_title(f"headroom: sign test p = {headroom['p_value']:.3g}")
    ax.legend(fontsize="x-small", loc="lower left")

"""Markdown report and metric plots from a synthetic metrics log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from etrm.report.markdown import PLOTS_MISSING, ReportError, plot_metrics, read_metrics_log, summarise, write_report
from etrm.testing.verdict import HypothesisRow, VerdictTable


def _write_log(path: Path, steps: int = 30, encoder: bool = True) -> Path:
    lines = []
    for step in range(1, steps + 1):
        line = {
            "step": step,
            "train/lm_loss": 2.0 * 0.95**step,
            "train/q_halt_loss": 0.3,
            "train/kl_loss": 0.0,
            "train/accuracy": 0.02 * step,
            "train/exact_accuracy": 0.0,
            "train/q_halt_accuracy": 0.9,
            "train/steps": 4.0,
            "train/count": 8,
            "lr": 1e-4,
            "grad/decoder_norm_preclip": 0.0,
            "grad/decoder_norm_postclip": 0.0,
            "grad/total_norm_preclip": 5.0 / step,
            "grad/total_norm_postclip": min(1.0, 5.0 / step),
        }
        if encoder:
            line |= {
                "grad/encoder_norm_preclip": 5.0 / step,
                "grad/encoder_norm_postclip": min(1.0, 5.0 / step),
                "encoder/output_mean": 0.0,
                "encoder/output_std": 1.0,
                "encoder/output_norm": 5.6,
                "encoder/cross_sample_std": 0.01 * step,
                "encoder/within_task_std": 0.001,
                "encoder/token_std": 0.5,
            }
        if step == 7:
            del line["train/q_halt_loss"]  # not every line has every key
        lines.append(line)
        if step % 10 == 0:
            lines.append({"step": step, "eval/ARC/pass@1": 0.01 * step, "eval/ARC/pass@2": 0.015 * step})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _verdict() -> VerdictTable:
    return VerdictTable(
        [
            HypothesisRow(
                "hypothesis2",
                "H2: do encoder gradients flow?",
                "no evidence",
                passed=3,
                controls_passed=1,
                controls_total=1,
            )
        ],
        [],
    )


def test_read_metrics_log_keeps_lines_and_series(tmp_path):
    log = read_metrics_log(_write_log(tmp_path / "m.jsonl"))
    assert len(log.lines) == 33
    steps, values = log.series("train/q_halt_loss")
    assert steps.size == 29 and 7 not in steps
    steps, values = log.series("eval/ARC/pass@1")
    np.testing.assert_allclose(steps, [10, 20, 30])
    np.testing.assert_allclose(values, [0.1, 0.2, 0.3])
    rows = {row[0]: row for row in summarise(log)}
    assert rows["train/lm_loss"][1:4] == (30, pytest.approx(1.9), pytest.approx(2.0 * 0.95**30))


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"step": 1}\n{"step": 2, \n', r"m.jsonl:2: not valid JSON"),
        ("[1, 2]\n", r"m.jsonl:1: expected a JSON object, got list"),
        ('{"train/lm_loss": 1.0}\n', r"m.jsonl:1: no integer 'step'"),
        ('{"step": 1}\n\n{"step": 3, "phase": [1]}\n', r"m.jsonl, step 3: 'phase' must be a number, text or null"),
        ("\n", r"m.jsonl: metrics log has no lines"),
    ],
)
def test_malformed_logs_are_errors_naming_file_and_line(tmp_path, text, match):
    (tmp_path / "m.jsonl").write_text(text)
    with pytest.raises(ReportError, match=match):
        read_metrics_log(tmp_path / "m.jsonl")


def test_text_values_are_run_notes_not_metrics(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 0, "pretrained_decoder/checkpoint": "step_9"}\n{"step": 1, "x": 2}\n')
    log = read_metrics_log(tmp_path / "m.jsonl")
    assert log.notes == {"pretrained_decoder/checkpoint": "step_9"} and log.keys() == ["x"]


def test_null_values_become_nan(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1, "train/lm_loss": null}\n')
    assert np.isnan(read_metrics_log(tmp_path / "m.jsonl").series("train/lm_loss")[1][0])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> tuple[Path, Path]:
    """One report over a log with every key (plotting is the slow part: ~0.4 s a figure)."""
    tmp = tmp_path_factory.mktemp("report")
    log = _write_log(tmp / "m.jsonl")
    return write_report(tmp / "out", _verdict(), log, {"metrics_log": f"`{log}` (user)"}), log


def test_report_has_verdict_artifacts_and_summary(full_report):
    target, log = full_report
    md = target.read_text()
    assert target.name == "report.md"
    assert "| hypothesis2 | H2: do encoder gradients flow? | **no evidence** | 3 | 0 | 0 | 0 | 0 | 1/1 |" in md
    assert f"- metrics_log: `{log}` (user)" in md
    assert "| grad/encoder_norm_preclip | 30 | 5 | 0.1667 | 0.1667 | 5 |" in md
    assert "No data in the log" not in md


@pytest.mark.parametrize("png", ["losses.png", "grad_norms.png", "encoder_diversity.png", "accuracy.png"])
def test_report_links_every_plot(full_report, png):
    target, _ = full_report
    assert f"]({png})" in target.read_text()
    data = (target.parent / png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_figures_without_data_are_left_out_and_named(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 1, "train/lm_loss": 2.0}\n{"step": 2, "train/lm_loss": 1.5}\n')
    log = read_metrics_log(tmp_path / "m.jsonl")
    assert [name for name, _ in plot_metrics(log, tmp_path)] == ["losses.png"]
    md = write_report(tmp_path / "out", None, log.path).read_text()
    assert "No data in the log for: Gradient norms, pre- vs post-clip, Encoder output diversity, Accuracy." in md
    assert "No hypothesis or experiment checks ran." in md


def test_zero_gradient_norms_stay_visible_on_a_symlog_axis():
    from matplotlib.figure import Figure

    from etrm.report.markdown import _log_axis

    ax_zero, ax_pos = Figure().subplots(1, 2)
    _log_axis(ax_zero, np.array([0.0, 0.5, 2.0]))
    _log_axis(ax_pos, np.array([0.5, 2.0]))
    assert (ax_zero.get_yscale(), ax_pos.get_yscale()) == ("symlog", "log")


def test_without_matplotlib_the_report_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    md = write_report(tmp_path / "out", _verdict(), _write_log(tmp_path / "m.jsonl", steps=2)).read_text()
    assert PLOTS_MISSING in md and "| train/lm_loss |" in md
    assert not list((tmp_path / "out").glob("*.png"))


def test_report_without_log_points_to_the_option(tmp_path):
    md = write_report(tmp_path, _verdict(), None).read_text()
    assert "No metrics log (pass `--metrics-log PATH`)." in md


def test_report_on_the_bundled_experiment_log(tmp_path):
    """The main job's report: the real log of the frozen-decoder fixture run, notes included."""
    from etrm.report.markdown import write_report
    from etrm.testing.artifacts import BUNDLED, fixtures_root

    md = write_report(tmp_path, None, fixtures_root() / BUNDLED["metrics_log"]).read_text()
    assert "pretrained_decoder/checkpoint: `step_final`" in md
    assert "![Gradient norms, pre- vs post-clip](grad_norms.png)" in md
    assert (tmp_path / "losses.png").is_file()

"""The searched pass@K reaches the investigation: `etrm experiment1 --eval-context-search K` logs
`eval/searched/ARC/pass@K` beside `eval/ARC/pass@K`; the verdict JSON's `context_search` block
names those fields per evaluation, and the report's H7 section tables them."""

from __future__ import annotations

import json

import pytest

from etrm.metrics_log import context_search_block, context_search_evaluations
from etrm.report.h7 import h7_section
from etrm.testing.verdict import VerdictTable

TRAIN = {"step": 1, "train/lm_loss": 2.0}
PLAIN_EVAL = {"step": 0, "eval/ARC/pass@1": 0.0, "eval/ARC/pass@2": 0.0, "eval/tasks_evaluated": 4}
SEARCHED_EVAL = {
    "step": 2,
    "eval/ARC/pass@1": 0.25,
    "eval/ARC/pass@2": 0.25,
    "eval/searched/ARC/pass@1": 0.5,
    "eval/searched/ARC/pass@2": 0.75,
    "search/steps": 8,
    "search/puzzles": 16,
    "search/puzzles_lowered": 15,
}


def _log(tmp_path, *records):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_each_searched_evaluation_maps_pass_at_k_for_both_contexts(tmp_path):
    block = context_search_block(_log(tmp_path, PLAIN_EVAL, TRAIN, SEARCHED_EVAL))
    assert block["evaluations"] == [
        {
            "step": 2,
            "steps": 8,
            "puzzles": 16,
            "puzzles_lowered": 15,
            "encoder": {"pass@1": 0.25, "pass@2": 0.25},
            "searched": {"pass@1": 0.5, "pass@2": 0.75},
        }
    ]
    assert block["metrics_log"].endswith("metrics.jsonl")


def test_a_log_without_the_search_or_no_log_gives_no_block(tmp_path):
    assert context_search_block(_log(tmp_path, PLAIN_EVAL, TRAIN)) == {}
    assert context_search_block(None) == {}
    assert context_search_block(tmp_path / "missing.jsonl") == {}
    assert context_search_evaluations([TRAIN, PLAIN_EVAL]) == []


def test_the_verdict_json_keeps_the_block_and_reads_a_file_without_it(tmp_path):
    block = context_search_block(_log(tmp_path, SEARCHED_EVAL))
    table = VerdictTable([], [], {}, block)
    again = VerdictTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.context_search == block
    older = {k: v for k, v in table.to_dict().items() if k != "context_search"}
    assert VerdictTable.from_dict(older).context_search == {}


def test_the_h7_section_tables_encoder_and_searched_pass_at_k(tmp_path):
    block = context_search_block(_log(tmp_path, PLAIN_EVAL, SEARCHED_EVAL))
    md = "\n".join(h7_section(VerdictTable([], [], {}, block), tmp_path, "no plots"))
    assert "| step | encoder pass@1 | encoder pass@2 | searched pass@1 | searched pass@2 | puzzles lowered |" in md
    assert "| 2 | 0.25 | 0.25 | 0.5 | 0.75 | 15 of 16 |" in md
    assert "8 steps" in md
    assert h7_section(VerdictTable([], [], {}, {}), tmp_path, "no plots") == []


@pytest.mark.slow
def test_investigate_reports_the_searched_pass_at_k_of_an_experiment1_run(tmp_path):
    """End to end on a real run: experiment1 with the search, then `etrm investigate` on its log."""
    from etrm.bundled import fixtures_root
    from etrm.cli import main
    from etrm.testing.artifacts import BUNDLED

    trm = fixtures_root() / BUNDLED["trm_checkpoint"]
    data = fixtures_root() / BUNDLED["data_dir"]
    run = tmp_path / "run"
    args = ["experiment1", "--trm-checkpoint", str(trm), "--data", str(data), "--out", str(run)]
    args += ["--steps", "2", "--batch-size", "2", "--eval-every", "2", "--max-eval-groups", "1"]
    assert main([*args, "--eval-context-search", "2"]) == 0
    verdict, report = tmp_path / "verdict.json", tmp_path / "report"
    status = main(
        ["investigate", "-m", "hypothesis1", "--metrics-log", str(run / "metrics.jsonl")]
        + ["--verdict-json", str(verdict), "--report", str(report)]
    )
    assert status == 0
    block = json.loads(verdict.read_text())["context_search"]
    assert [e["step"] for e in block["evaluations"]] == [0, 2]
    assert all(set(e["searched"]) >= {"pass@1", "pass@2"} and e["steps"] == 2 for e in block["evaluations"])
    assert "searched pass@1" in (report / "report.md").read_text()

"""`etrm evaluate`: a checkpoint scored on a built dataset's test split."""

from __future__ import annotations

from etrm.cli import main
from etrm.data import fixture_data_dir
from etrm.testing.artifacts import BUNDLED, fixtures_root

ETRM = fixtures_root() / BUNDLED["etrm_frozen_checkpoint"]


def test_evaluate_scores_every_test_task(capsys):
    assert main(["evaluate", "--checkpoint", str(ETRM), "--data", str(fixture_data_dir("fewshot"))]) == 0
    out = capsys.readouterr().out
    assert "4 tasks evaluated, metric averaged over 4 tasks" in out and "pass@1 " in out


def test_max_eval_groups_lists_the_tasks_left_out(capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(ETRM),
                "--data",
                str(fixture_data_dir("fewshot")),
                "--max-eval-groups",
                "1",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 tasks evaluated" in out and "3 tasks without predictions (left out of the metric)" in out


def test_a_dataset_of_another_canvas_is_a_clear_error(tmp_path, capsys):
    from etrm.data.build import build_dataset

    other = build_dataset(tmp_path / "c12", mode="fewshot", canvas=12, task_ids=["00576224"], progress=False)
    assert main(["evaluate", "--checkpoint", str(ETRM), "--data", str(other)]) == 1
    assert "seq_len 144, but the checkpoint's model expects 100" in capsys.readouterr().err

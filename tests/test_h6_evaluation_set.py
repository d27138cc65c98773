"""What H6 scores on a user's dataset (`--data`): the evaluation set built from a dataset names
the puzzles of its test split only, and predictions made on train-split rows never enter the
score. On builds by the official TRM builder and the origin ETRM builder (interop corpus) and
on ours, in both modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from etrm.bundled import fixtures_root
from etrm.checks import h6_evaluator as h6
from etrm.evaluation import ArcEvaluator, EvaluationError, oracle_predictions

DATASETS = {
    "official-builder": fixtures_root() / "interop" / "official" / "data",  # eval demos in its train split
    "origin-fewshot": fixtures_root() / "interop" / "origin" / "fewshot",
    "ours-trm": fixtures_root() / "data" / "trm",
    "ours-fewshot": fixtures_root() / "data" / "fewshot",
}
BLANK = "<blank>"


def split_arrays(data_dir: Path, split: str) -> dict[str, np.ndarray]:
    """The split's arrays, read straight from the files (not through etrm's readers)."""
    return {
        field: np.load(data_dir / split / f"all__{field}.npy")
        for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices")
    }


def row_identifiers(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The puzzle identifier of every row."""
    return np.repeat(arrays["puzzle_identifiers"], np.diff(arrays["puzzle_indices"]))


@pytest.mark.parametrize("data_dir", DATASETS.values(), ids=DATASETS.keys())
def test_the_evaluation_set_names_the_test_splits_puzzles_only(data_dir):
    identifiers, test_puzzles = h6.dataset_evaluation_set(data_dir)
    names = json.loads((data_dir / "identifiers.json").read_text())
    test_ids = set(split_arrays(data_dir, "test")["puzzle_identifiers"].tolist())
    train_only = set(split_arrays(data_dir, "train")["puzzle_identifiers"].tolist()) - test_ids
    assert train_only, f"{data_dir}: no train-only puzzle to leave out, so this dataset proves nothing"
    assert len(identifiers) == len(names)  # identifier numbers stay the dataset's own
    kept = {i for i, name in enumerate(identifiers) if name != BLANK}
    assert kept == test_ids, (sorted(kept - test_ids)[:5], sorted(test_ids - kept)[:5])
    assert [identifiers[i] for i in sorted(test_ids)] == [names[i] for i in sorted(test_ids)]
    assert test_puzzles == json.loads((data_dir / "test_puzzles.json").read_text())


@pytest.mark.parametrize("data_dir", DATASETS.values(), ids=DATASETS.keys())
def test_predictions_on_train_split_rows_never_enter_the_score(data_dir):
    """All-correct predictions for the test split score 1.0; every train-split row, answered
    with another row's label (wrong), is refused with an error naming it, and leaves the
    round as it was: the score and the number of predictions are those of the test rows."""
    identifiers, test_puzzles = h6.dataset_evaluation_set(data_dir)
    canvas = int(round(np.load(data_dir / "test" / "all__inputs.npy", mmap_mode="r").shape[1] ** 0.5))
    evaluator = ArcEvaluator(identifiers, test_puzzles)
    evaluator.begin_round()
    batch, outputs = oracle_predictions(identifiers, test_puzzles, canvas=canvas)
    evaluator.update(batch, outputs)
    train = split_arrays(data_dir, "train")
    ids = row_identifiers(train)
    wrong = np.roll(train["labels"].clip(min=0), 1, axis=0)  # another row's answer
    refused = 0
    for row in range(len(ids)):
        row_batch = {
            "inputs": torch.from_numpy(train["inputs"][row : row + 1].astype(np.int32)),
            "puzzle_identifiers": torch.tensor([int(ids[row])], dtype=torch.int32),
        }
        row_outputs = {
            "preds": torch.from_numpy(wrong[row : row + 1].astype(np.int32)),
            "q_halt_logits": torch.tensor([5.0]),
        }  # confident, so a vote would weigh
        if ids[row] == 0:
            continue  # blank-identifier padding, dropped by design
        with pytest.raises(EvaluationError, match=rf"puzzle identifier {ids[row]}\b|row 0 \(identifier {ids[row]} "):
            evaluator.update(row_batch, row_outputs)
        refused += 1
    assert refused > 0
    result = evaluator.result()
    assert result.num_predictions == len(batch["inputs"])
    assert result.metrics["ARC/pass@1"] == 1.0 and result.tasks_evaluated == list(test_puzzles)

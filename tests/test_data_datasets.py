"""PuzzleDataset and FewShotPuzzleDataset over the bundled fixtures and a hand-written
official-layout folder: agreement on queries, demos, padding, sampling, sharding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from etrm.data import fixture_data_dir
from etrm.data.datasets import (
    DatasetFormatError,
    FewShotPuzzleDataset,
    PuzzleDataset,
    load_identifiers,
    load_metadata,
    load_test_puzzles,
)
from etrm.data.grids import EOS_ID, IGNORE_LABEL_ID, PAD_ID

FEWSHOT = fixture_data_dir("fewshot")


def arrays(folder: Path, split: str) -> dict[str, np.ndarray]:
    return {p.name.split("__")[1][:-4]: np.load(p) for p in (folder / split).glob("all__*.npy")}


def concat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def real_rows(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["puzzle_identifiers"] != 0


# --- a folder written by hand in the official builder's layout --------------------------------
@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """3 puzzles in 2 groups, 5 rows, seq_len 4, no num_demos, and metadata without
    total_puzzles (as in older official builds)."""
    root = tmp_path_factory.mktemp("official")
    (root / "test").mkdir()
    inputs = np.arange(20, dtype=np.uint8).reshape(5, 4) % 12
    labels = np.array([[2, 3, 1, 0]] * 5, dtype=np.uint8)
    for name, value in {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.array([1, 2, 3], np.int32),
        "puzzle_indices": np.array([0, 2, 3, 5], np.int32),
        "group_indices": np.array([0, 2, 3], np.int32),
    }.items():
        np.save(root / "test" / f"all__{name}.npy", value)
    (root / "test" / "dataset.json").write_text(
        json.dumps(
            {
                "pad_id": 0,
                "ignore_label_id": 0,
                "blank_identifier_id": 0,
                "vocab_size": 12,
                "seq_len": 4,
                "num_puzzle_identifiers": 4,
                "total_groups": 2,
                "mean_puzzle_examples": 5 / 3,
                "sets": ["all"],
            }
        )
    )
    (root / "identifiers.json").write_text(json.dumps(["<blank>", "a", "a|||t1|||0123456789", "b"]))
    return root


def test_official_layout_loads_and_iterates_every_row_in_order(official):
    ds = PuzzleDataset(official, "test", 2, test_mode=True)
    assert ds.metadata.total_puzzles is None and len(ds) == 3
    batches = list(ds)
    assert len(batches) == 3
    batch = concat(batches)
    expected_inputs = np.arange(20).reshape(5, 4) % 12
    np.testing.assert_array_equal(batch["inputs"][:5].numpy(), expected_inputs)
    assert batch["puzzle_identifiers"].tolist() == [1, 1, 2, 3, 3, 0]  # last batch padded with the blank id
    assert batch["labels"][0].tolist() == [2, 3, EOS_ID, IGNORE_LABEL_ID]  # PAD ignored, EOS supervised
    assert (batch["labels"][5] == IGNORE_LABEL_ID).all() and (batch["inputs"][5] == PAD_ID).all()
    assert batch["inputs"].dtype == torch.int32 and batch["labels"].dtype == torch.int64
    assert batch["puzzle_identifiers"].dtype == torch.int32


def test_official_layout_is_not_a_few_shot_dataset(official):
    with pytest.raises(DatasetFormatError, match=r"all__num_demos.npy: not found; few-shot datasets need"):
        FewShotPuzzleDataset(official, "test", 2, test_mode=True)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: (d / "test" / "dataset.json").unlink(), r"test[/\\]dataset.json: metadata file not found"),
        (lambda d: (d / "test" / "dataset.json").write_text("{"), "dataset.json: invalid JSON"),
        (lambda d: (d / "test" / "dataset.json").write_text('{"pad_id": 0}'), r"missing metadata key\(s\)"),
        (lambda d: (d / "test" / "all__labels.npy").unlink(), "all__labels.npy: array file not found"),
        (
            lambda d: np.save(d / "test" / "all__puzzle_indices.npy", np.array([0, 2, 3, 4], np.int32)),
            "all__puzzle_indices.npy: must rise from 0 to the row count 5",
        ),
        (
            lambda d: np.save(d / "test" / "all__puzzle_identifiers.npy", np.array([1, 2, 9], np.int32)),
            "all__puzzle_identifiers.npy: values outside 0..3",
        ),
        (
            lambda d: np.save(d / "test" / "all__num_demos.npy", np.array([1, 2, 0], np.int32)),
            "all__num_demos.npy: must give 0..puzzle size demos",
        ),
    ],
)
def test_format_errors_name_the_file(official, tmp_path, corrupt, message):
    folder = tmp_path / "copy"
    shutil.copytree(official, folder)
    corrupt(folder)
    with pytest.raises(DatasetFormatError, match=message):
        PuzzleDataset(folder, "test", 2)


def test_metadata_identifiers_and_test_puzzles_of_a_build():
    meta = load_metadata(FEWSHOT, "train")
    assert (meta.seq_len, meta.vocab_size, meta.sets) == (100, 12, ("all",))
    names = load_identifiers(FEWSHOT)
    assert names[0] == "<blank>" and meta.num_puzzle_identifiers == len(names)
    assert sorted(load_test_puzzles(FEWSHOT)) == ["00576224", "03560426", "0692e18c", "da2b0fe3"]


# --- test iteration on a few-shot build ------------------------------------------------------
@pytest.fixture(scope="module")
def query_rows() -> dict[str, np.ndarray]:
    """Every query row of the fixture's test split, read straight from the arrays."""
    a = arrays(FEWSHOT, "test")
    starts = a["puzzle_indices"][:-1]
    rows = [(r, p) for p, s in enumerate(starts) for r in range(s + a["num_demos"][p], a["puzzle_indices"][p + 1])]
    idx, puzzles = np.array(rows).T
    return {
        "inputs": a["inputs"][idx],
        "labels": a["labels"][idx],
        "ids": a["puzzle_identifiers"][puzzles],
        "puzzles": puzzles,
        "rows": idx,
    }


@pytest.mark.parametrize("batch_size", [3, 8])
def test_puzzle_and_few_shot_datasets_agree_on_queries(query_rows, batch_size):
    trm = concat(list(PuzzleDataset(FEWSHOT, "test", batch_size, test_mode=True)))
    few = concat(list(FewShotPuzzleDataset(FEWSHOT, "test", batch_size, test_mode=True, max_demos=4)))
    n = len(query_rows["ids"])
    assert len(trm["inputs"]) == len(few["inputs"]) == -(-n // batch_size) * batch_size
    for key in ("inputs", "labels", "puzzle_identifiers"):
        torch.testing.assert_close(trm[key], few[key], rtol=0, atol=0)
    np.testing.assert_array_equal(few["inputs"][:n].numpy(), query_rows["inputs"])
    expected_labels = np.where(query_rows["labels"] == 0, IGNORE_LABEL_ID, query_rows["labels"].astype(np.int64))
    np.testing.assert_array_equal(few["labels"][:n].numpy(), expected_labels)
    np.testing.assert_array_equal(few["puzzle_identifiers"][:n].numpy(), query_rows["ids"])
    padding = ~real_rows(few)
    assert padding.sum() == len(few["inputs"]) - n
    assert (few["labels"][padding] == IGNORE_LABEL_ID).all() and not few["demo_mask"][padding].any()
    assert (few["demo_inputs"][padding] == PAD_ID).all()


def test_demos_are_the_puzzles_train_pairs_and_never_the_query(query_rows):
    a = arrays(FEWSHOT, "test")
    ds = FewShotPuzzleDataset(FEWSHOT, "test", 5, test_mode=True, max_demos=4)
    batch = concat(list(ds))
    for i, (row, puzzle) in enumerate(zip(query_rows["rows"], query_rows["puzzles"])):
        first, demos = a["puzzle_indices"][puzzle], a["num_demos"][puzzle]
        assert batch["demo_mask"][i].tolist() == [k < demos for k in range(4)]
        np.testing.assert_array_equal(batch["demo_inputs"][i, :demos].numpy(), a["inputs"][first : first + demos])
        np.testing.assert_array_equal(batch["demo_labels"][i, :demos].numpy(), a["labels"][first : first + demos])
        assert row >= first + demos  # the query is not one of its demos
    assert batch["demo_labels"].dtype == torch.int32 and batch["demo_mask"].dtype == torch.bool
    assert (batch["demo_labels"][batch["demo_mask"]] == PAD_ID).any()  # raw tokens, PAD not mapped to -100


def test_max_demos_keeps_the_first_demos():
    full = FewShotPuzzleDataset(FEWSHOT, "test", 4, test_mode=True, max_demos=4).first_batch()
    capped = FewShotPuzzleDataset(FEWSHOT, "test", 4, test_mode=True, max_demos=2).first_batch()
    assert capped["demo_inputs"].shape == (4, 2, 100)
    assert capped["demo_mask"].sum(1).tolist() == torch.clamp(full["demo_mask"].sum(1), max=2).tolist()
    torch.testing.assert_close(capped["demo_inputs"], full["demo_inputs"][:, :2], rtol=0, atol=0)


# --- sampling ---------------------------------------------------------------------------------
def group_of_puzzle(folder: Path, split: str) -> np.ndarray:
    gi = arrays(folder, split)["group_indices"]
    return np.repeat(np.arange(len(gi) - 1), np.diff(gi))


@pytest.mark.parametrize("cls", [PuzzleDataset, FewShotPuzzleDataset])
def test_training_batches_pack_one_augmentation_per_group(cls):
    ds = cls(FEWSHOT, "train", 4, seed=1)
    groups = group_of_puzzle(FEWSHOT, "train")
    a = arrays(FEWSHOT, "train")
    seen: dict[int, int] = {}
    batches = list(ds._index_batches(0))
    assert batches and all(len(rows) == 4 and (rows >= 0).all() for _, rows, _ in batches)  # full, no padding
    for _, rows, puzzles in batches:
        for row, puzzle in zip(rows, puzzles):
            assert a["puzzle_indices"][puzzle] <= row < a["puzzle_indices"][puzzle + 1]
            if cls is FewShotPuzzleDataset:
                assert row >= a["puzzle_indices"][puzzle] + a["num_demos"][puzzle]  # queries only
            assert seen.setdefault(groups[puzzle], puzzle) == puzzle  # one augmentation per group per epoch
    order = [groups[p] for _, _, puzzles in batches for p in dict.fromkeys(puzzles)]
    assert order != sorted(order)  # groups are shuffled


def test_puzzle_dataset_trains_on_demo_rows_too():
    a = arrays(FEWSHOT, "train")
    demo_rows = {
        r
        for p in range(len(a["num_demos"]))
        for r in range(a["puzzle_indices"][p], a["puzzle_indices"][p] + a["num_demos"][p])
    }
    rows = {int(r) for it in range(3) for _, rr, _ in PuzzleDataset(FEWSHOT, "train", 4)._index_batches(it) for r in rr}
    assert rows & demo_rows


@pytest.mark.parametrize("cls", [PuzzleDataset, FewShotPuzzleDataset])
def test_sampling_is_deterministic_per_seed_and_varies_per_iteration(cls):
    def run(seed: int, iterations: int = 2) -> list[list[dict]]:
        ds = cls(FEWSHOT, "train", 4, seed=seed, epochs=2)
        return [list(ds) for _ in range(iterations)]

    first, again, other = run(0), run(0), run(1)
    assert len(first[0]) > 0
    for x, y in zip(first[0], again[0]):
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)
    flat = lambda runs: torch.cat([b["puzzle_identifiers"] for b in runs])  # noqa: E731
    assert not torch.equal(flat(first[0]), flat(other[0]))
    assert not torch.equal(flat(first[0]), flat(first[1]))  # each iter() is a new epoch order


def test_first_batch_peeks_without_consuming():
    ds = PuzzleDataset(FEWSHOT, "train", 4, seed=2)
    peek = ds.first_batch()
    torch.testing.assert_close(next(iter(ds)), peek, rtol=0, atol=0)


@pytest.mark.parametrize("test_mode", [True, False])
@pytest.mark.parametrize("cls", [PuzzleDataset, FewShotPuzzleDataset])
def test_ranks_split_each_global_batch(cls, test_mode):
    split = "test" if test_mode else "train"
    whole = list(cls(FEWSHOT, split, 6, seed=3, test_mode=test_mode))
    parts = [list(cls(FEWSHOT, split, 6, seed=3, test_mode=test_mode, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole)
    for full, left, right in zip(whole, *parts):
        assert len(left["inputs"]) == 3
        for key in full:
            torch.testing.assert_close(torch.cat([left[key], right[key]]), full[key], rtol=0, atol=0)


@pytest.mark.parametrize("test_mode", [True, False])
def test_max_groups_keeps_whole_tasks(test_mode):
    a = arrays(FEWSHOT, "test")
    groups = group_of_puzzle(FEWSHOT, "test")
    allowed = set(a["puzzle_identifiers"][groups < 2].tolist())
    ds = FewShotPuzzleDataset(FEWSHOT, "test", 2, test_mode=test_mode, max_groups=2, epochs=8)
    ids = set(torch.cat([b["puzzle_identifiers"] for b in ds]).tolist()) - {0}
    if test_mode:
        assert ids == allowed  # every augmentation of the first 2 tasks
    else:
        assert ids <= allowed and len(ids) > 2


def test_len_and_argument_errors():
    ds = PuzzleDataset(FEWSHOT, "test", 3, test_mode=True)
    assert len(ds) == ds.num_batches == len(list(ds))
    with pytest.raises(TypeError, match="test-mode only"):
        len(PuzzleDataset(FEWSHOT, "train", 3))
    with pytest.raises(ValueError, match="not divisible by world_size"):
        PuzzleDataset(FEWSHOT, "train", 3, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        PuzzleDataset(FEWSHOT, "train", 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_demos"):
        FewShotPuzzleDataset(FEWSHOT, "train", 4, max_demos=0)
    with pytest.raises(DatasetFormatError, match="'valid' split"):
        PuzzleDataset(FEWSHOT, "valid", 4)

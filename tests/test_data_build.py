"""Dataset builder: official layout, split semantics per mode, augmentation groups,
translation, determinism, streaming writes, safety of the output folder, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from etrm.cli import main as cli_main
from etrm.data.build import build_dataset, draw_augmentations, puzzle_hash
from etrm.data.grids import PAD_ID, decode_grid, parse_augmentation_name
from etrm.data.sources import ArcTask, TaskValidationError, load_tasks, save_task_folder

OFFICIAL_METADATA = [
    "pad_id",
    "ignore_label_id",
    "blank_identifier_id",
    "vocab_size",
    "seq_len",
    "num_puzzle_identifiers",
    "total_groups",
    "mean_puzzle_examples",
    "total_puzzles",
    "sets",
]
OFFICIAL_ARRAYS = ["inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"]
CANVAS = 8


def random_task(task_id: str, rng: np.random.Generator, demos: int, tests: int, max_side: int = 6) -> ArcTask:
    def grid() -> np.ndarray:
        return rng.integers(0, 10, size=tuple(rng.integers(1, max_side + 1, size=2))).astype(np.uint8)

    return ArcTask(task_id, [(grid(), grid()) for _ in range(demos)], [(grid(), grid()) for _ in range(tests)])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    tasks = {
        "training": [random_task(f"tr{i}", rng, 2 + i % 3, 1 + i % 2) for i in range(4)],
        "evaluation": [random_task(f"ev{i}", rng, 3, 1 + i % 2) for i in range(3)],
    }
    return save_task_folder(tasks, tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def tasks(source):
    return load_tasks(source)


@pytest.fixture(scope="module")
def builds(source, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builds")
    return {
        mode: build_dataset(root / mode, source=source, mode=mode, num_aug=3, seed=5, canvas=CANVAS, progress=False)
        for mode in ("fewshot", "trm")
    }


def read_split(folder: Path, split: str) -> dict[str, np.ndarray]:
    return {p.name.split("__")[1][:-4]: np.load(p) for p in sorted((folder / split).glob("all__*.npy"))}


def rows_of(folder: Path, split: str) -> list[tuple[str, list[np.ndarray], list[np.ndarray]]]:
    """(puzzle name, input tokens per row, label tokens per row) for every puzzle of a split."""
    names = json.loads((folder / "identifiers.json").read_text())
    a = read_split(folder, split)
    out = []
    for p, identifier in enumerate(a["puzzle_identifiers"]):
        lo, hi = a["puzzle_indices"][p], a["puzzle_indices"][p + 1]
        out.append((names[identifier], list(a["inputs"][lo:hi]), list(a["labels"][lo:hi])))
    return out


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def offset_of(tokens: np.ndarray) -> tuple[int, int]:
    colour = tokens.reshape(CANVAS, CANVAS) >= 2
    return int(colour.any(1).argmax()), int(colour.any(0).argmax())


# --- layout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fewshot", "trm"])
def test_official_layout_and_metadata(builds, mode):
    folder = builds[mode]
    names = json.loads((folder / "identifiers.json").read_text())
    assert names[0] == "<blank>" and len(set(names)) == len(names)
    for split in ("train", "test"):
        meta = json.loads((folder / split / "dataset.json").read_text())
        assert list(meta) == OFFICIAL_METADATA
        a = read_split(folder, split)
        expected = OFFICIAL_ARRAYS + (["num_demos"] if mode == "fewshot" else [])
        assert sorted(a) == sorted(expected)
        assert a["inputs"].dtype == a["labels"].dtype == np.uint8
        assert a["inputs"].shape == a["labels"].shape == (a["puzzle_indices"][-1], CANVAS * CANVAS)
        for key in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
            assert a[key].dtype == np.int32
        assert a["puzzle_indices"][0] == 0 and np.all(np.diff(a["puzzle_indices"]) > 0)
        assert a["group_indices"][0] == 0 and a["group_indices"][-1] == len(a["puzzle_identifiers"])
        assert meta == {
            "pad_id": 0,
            "ignore_label_id": 0,
            "blank_identifier_id": 0,
            "vocab_size": 12,
            "seq_len": CANVAS * CANVAS,
            "num_puzzle_identifiers": len(names),
            "total_groups": len(a["group_indices"]) - 1,
            "mean_puzzle_examples": len(a["inputs"]) / len(a["puzzle_identifiers"]),
            "total_puzzles": len(a["puzzle_identifiers"]),
            "sets": ["all"],
        }
    test_puzzles = json.loads((folder / "test_puzzles.json").read_text())
    assert sorted(test_puzzles) == ["ev0", "ev1", "ev2"]
    assert set(test_puzzles["ev0"]) == {"train", "test"}


# --- split semantics ----------------------------------------------------------------------
def test_fewshot_rows_are_demos_then_queries_of_the_augmented_task(builds, tasks):
    folder = builds["fewshot"]
    by_id = {t.task_id: t for split in tasks.values() for t in split}
    for split, prefix in (("train", "tr"), ("test", "ev")):
        num_demos = read_split(folder, split)["num_demos"]
        for (name, inputs, labels), demos in zip(rows_of(folder, split), num_demos):
            task_id, aug = parse_augmentation_name(name)
            assert task_id.startswith(prefix)  # strict: evaluation tasks only in the test split
            task = by_id[task_id]
            assert demos == len(task.train)
            for (inp, out), tok_in, tok_out in zip(task.train + task.test, inputs, labels):
                np.testing.assert_array_equal(decode_grid(tok_in), aug.apply(inp))
                np.testing.assert_array_equal(decode_grid(tok_out), aug.apply(out))


def test_trm_mode_has_the_official_split_semantics(builds, tasks):
    folder = builds["trm"]
    by_id = {t.task_id: t for split in tasks.values() for t in split}
    train = {name: (inputs, labels) for name, inputs, labels in rows_of(folder, "train")}
    test = rows_of(folder, "test")
    for name, inputs, labels in test:
        task = by_id[parse_augmentation_name(name)[0]]
        assert name.startswith("ev") and len(inputs) == len(task.test)  # queries only
        assert name in train and len(train[name][0]) == len(task.train)  # its demos, same identifier
        for (inp, out), tok_in, tok_out in zip(task.test, inputs, labels):  # test split never translated
            aug = parse_augmentation_name(name)[1]
            np.testing.assert_array_equal(decode_grid(tok_in), aug.apply(inp))
            np.testing.assert_array_equal(decode_grid(tok_out), aug.apply(out))
    for name, (inputs, labels) in train.items():
        task_id, aug = parse_augmentation_name(name)
        task = by_id[task_id]
        pairs = task.train + task.test if task_id.startswith("tr") else task.train
        assert len(inputs) == len(pairs)
        offsets = [offset_of(tok) for tok in inputs]
        assert (0, 0) in offsets  # one example per puzzle stays in place
        for (inp, out), tok_in, tok_out, offset in zip(pairs, inputs, labels, offsets):
            np.testing.assert_array_equal(decode_grid(tok_in, offset=offset), aug.apply(inp))
            np.testing.assert_array_equal(decode_grid(tok_out, offset=offset), aug.apply(out))
    all_offsets = [offset_of(tok) for inputs, _ in train.values() for tok in inputs]
    assert len(set(all_offsets)) > 3  # translation actually happens


def test_translation_flag(source, tmp_path):
    plain = build_dataset(tmp_path / "a", source=source, mode="trm", canvas=CANVAS, translate=False, progress=False)
    moved = build_dataset(tmp_path / "b", source=source, mode="fewshot", canvas=CANVAS, translate=True, progress=False)
    assert all(offset_of(tok) == (0, 0) for _, inputs, _ in rows_of(plain, "train") for tok in inputs)
    assert any(offset_of(tok) != (0, 0) for _, inputs, _ in rows_of(moved, "train") for tok in inputs)
    assert all(offset_of(tok) == (0, 0) for _, inputs, _ in rows_of(moved, "test") for tok in inputs)


# --- augmentation groups -------------------------------------------------------------------
def test_groups_start_with_the_original_and_hold_distinct_augmentations(builds, tasks):
    folder = builds["fewshot"]
    a = read_split(folder, "train")
    names = [name for name, _, _ in rows_of(folder, "train")]
    groups = [names[lo:hi] for lo, hi in zip(a["group_indices"][:-1], a["group_indices"][1:])]
    by_id = {t.task_id: t for t in tasks["training"]}
    for group in groups:
        task_id = group[0]
        assert "|||" not in task_id and len(group) == 4  # original + num_aug
        assert all(parse_augmentation_name(n)[0] == task_id for n in group)
        pairs = by_id[task_id].train + by_id[task_id].test
        hashes = {puzzle_hash(pairs, parse_augmentation_name(n)[1]) for n in group}
        assert len(hashes) == len(group)


def test_duplicate_augmentations_are_dropped():
    # Every augmentation of a task drawn only in colour 0 on 1x1 grids is the task itself.
    task = ArcTask(
        "flat",
        [(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8))],
        [(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8))],
    )
    assert len(draw_augmentations(task, 10, seed=0)) == 1
    # A diagonal in one colour has 2 orientations x 9 colours = 18 distinct versions: asking
    # for 30 yields exactly those 18 (the 5N = 150 draws find them all), each once.
    sym = ArcTask(
        "sym",
        [(np.array([[1, 0], [0, 1]], np.uint8), np.ones((2, 2), np.uint8))],
        [(np.ones((1, 1), np.uint8), np.zeros((1, 1), np.uint8))],
    )
    group = draw_augmentations(sym, 30, seed=0)
    assert len({puzzle_hash(sym.train + sym.test, aug) for aug in group}) == len(group) == 18


def test_augmentations_are_seeded_per_task(source, tmp_path, tasks):
    ev1 = next(t for t in tasks["evaluation"] if t.task_id == "ev1")
    alone = draw_augmentations(ev1, 5, seed=3)
    assert draw_augmentations(ev1, 5, seed=3) == alone
    assert draw_augmentations(ev1, 5, seed=4) != alone
    # Builds over different task sets agree on the tasks they share.
    a = build_dataset(
        tmp_path / "a", source=source, task_ids=["ev1", "tr0"], num_aug=5, seed=3, canvas=CANVAS, progress=False
    )
    b = build_dataset(
        tmp_path / "b", source=source, task_ids=["ev1", "ev2"], num_aug=5, seed=3, canvas=CANVAS, progress=False
    )
    names_a = [n for n, _, _ in rows_of(a, "test")]
    names_b = [n for n, _, _ in rows_of(b, "test") if n.startswith("ev1")]
    assert names_a == names_b
    assert [parse_augmentation_name(n)[1] for n in names_a] == alone


# --- determinism and safety -------------------------------------------------------------------
def test_builds_are_byte_identical_and_seed_dependent(source, builds, tmp_path):
    again = build_dataset(
        tmp_path / "again", source=source, mode="trm", num_aug=3, seed=5, canvas=CANVAS, progress=False
    )
    assert file_digests(again) == file_digests(builds["trm"])
    other = build_dataset(
        tmp_path / "other", source=source, mode="trm", num_aug=3, seed=6, canvas=CANVAS, progress=False
    )
    assert file_digests(other)["train/all__inputs.npy"] != file_digests(again)["train/all__inputs.npy"]


def test_refuses_non_empty_folders_and_overwrites_only_datasets(source, tmp_path):
    out = tmp_path / "out"
    build_dataset(out, source=source, mode="fewshot", canvas=CANVAS, progress=False)
    with pytest.raises(FileExistsError, match="not empty; pass overwrite"):
        build_dataset(out, source=source, mode="trm", canvas=CANVAS, progress=False)
    build_dataset(out, source=source, mode="trm", canvas=CANVAS, overwrite=True, progress=False)
    assert not (out / "train" / "all__num_demos.npy").exists()  # nothing stale from the earlier build
    assert json.loads((out / "build_info.json").read_text())["mode"] == "trm"
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="does not look like a built dataset"):
        build_dataset(precious, source=source, canvas=CANVAS, overwrite=True, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "precious"]  # no staging left behind


def test_a_non_empty_out_folder_is_refused_before_any_task_is_read(tmp_path, monkeypatch):
    import etrm.data.build as build

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    monkeypatch.setattr(build, "load_tasks", lambda *a, **k: pytest.fail("read the source before checking --out"))
    with pytest.raises(FileExistsError, match="not empty; pass overwrite"):
        build_dataset(tmp_path / "out", progress=False)


def test_never_modifies_its_input(source, tmp_path):
    before = file_digests(source)
    build_dataset(tmp_path / "x", source=source, mode="trm", num_aug=2, canvas=CANVAS, progress=False)
    assert file_digests(source) == before


def test_bad_arguments_and_grids_too_big_for_the_canvas(source, tmp_path):
    with pytest.raises(TaskValidationError, match=r"training task tr\d: a grid side of \d does not fit the 3x3"):
        build_dataset(tmp_path / "x", source=source, canvas=3, progress=False)
    for kwargs, message in [
        ({"mode": "both"}, "unknown mode"),
        ({"num_aug": -1}, "num_aug"),
        ({"max_tasks": 0}, "max_tasks"),
        ({"canvas": 31}, "canvas"),
        ({"task_ids": ["nope"]}, r"not in the source: \['nope'\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_dataset(tmp_path / "y", source=source, progress=False, **kwargs)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_max_tasks_and_unsolved_test_inputs(tmp_path):
    challenge = {
        f"t{i}": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3, 3]]}]} for i in range(3)
    }
    src = tmp_path / "src"
    src.mkdir()
    (src / "k_evaluation_challenges.json").write_text(json.dumps(challenge))
    with pytest.raises(TaskValidationError, match="solutions"):
        build_dataset(tmp_path / "a", source=src, progress=False)
    out = build_dataset(tmp_path / "b", source=src, max_tasks=2, canvas=4, allow_missing_solutions=True, progress=False)
    a = read_split(out, "test")
    assert len(a["puzzle_identifiers"]) == 2 and not (out / "train").exists()  # no training tasks, no train split
    queries = a["puzzle_indices"][:-1] + a["num_demos"]
    assert np.all(a["labels"][queries] == PAD_ID)  # unknown outputs: nothing to supervise or score
    assert "output" not in json.loads((out / "test_puzzles.json").read_text())["t0"]["test"][0]


def test_cli_builds_and_reports_leakage(source, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(
        [
            "build-data",
            "--source",
            str(source),
            "--mode",
            "fewshot",
            "--num-aug",
            "1",
            "--canvas",
            str(CANVAS),
            "--max-tasks",
            "2",
            "--out",
            str(out),
            "--leakage",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "no leaks" in printed and "train: 2 groups, 4 puzzles" in printed
    info = json.loads((out / "build_info.json").read_text())
    assert (info["mode"], info["num_aug"], info["canvas"], info["max_tasks"]) == ("fewshot", 1, CANVAS, 2)


def test_an_interrupted_build_leaves_nothing_behind(source, tmp_path, monkeypatch):
    import etrm.data.build as build_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "_write_split", crash)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(tmp_path / "out", source=source, canvas=CANVAS, progress=False)
    assert list(tmp_path.iterdir()) == []

"""Every command's bad inputs end in one line, `etrm <command>: error: <message>`, on
stderr: exit 2 for usage (a path that cannot be used, a flag that cannot be honoured),
1 for content, no traceback; `ETRM_DEBUG=1` lets the exception through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.cli import COMMANDS, build_parser, main
from etrm.data.sources import TaskValidationError
from etrm.testing.artifacts import BUNDLED, fixtures_root

TRM = fixtures_root() / BUNDLED["trm_checkpoint"]
FEWSHOT = fixtures_root() / BUNDLED["data_dir"]
OFFICIAL_DATA = fixtures_root() / "interop" / "official" / "data"  # a 30x30 canvas build
RAGGED_TASK = {"train": [{"input": [[1], [2, 3]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}


def _error(capsys, command: str) -> str:
    """The message of the one error line `command` wrote to stderr."""
    err = capsys.readouterr().err  # after any progress bar of the work done before the error
    assert err.endswith("\n") and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"etrm {command}: error: ") and err.count(f"etrm {command}:") == 1, err
    return last.removeprefix(f"etrm {command}: error: ")


@pytest.fixture
def ragged(tmp_path: Path) -> Path:
    (tmp_path / "ragged").mkdir()
    (tmp_path / "ragged" / "abcd1234.json").write_text(json.dumps(RAGGED_TASK))
    return tmp_path / "ragged"


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    path = tmp_path / "step_9"
    path.write_bytes(TRM.read_bytes()[:1000])
    return path


# --- build-data ------------------------------------------------------------------------------


def test_build_data_ragged_task(ragged, tmp_path, capsys):
    assert main(["build-data", "--source", str(ragged), "--out", str(tmp_path / "out")]) == 1
    message = _error(capsys, "build-data")
    assert "task abcd1234" in message and "abcd1234.json" in message
    assert message.endswith("train pair 0 input: ragged grid: rows have lengths [1, 2]")
    assert not (tmp_path / "out").exists()


def test_build_data_non_json_task(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "abcd1234.json").write_text('{"train": [')
    assert main(["build-data", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 1
    assert f"{tmp_path / 'src' / 'abcd1234.json'}: invalid JSON" in _error(capsys, "build-data")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--canvas", "99", "argument --canvas: must be in 1..30, got 99"),
        ("--num-aug", "-1", "argument --num-aug: must be at least 0, got -1"),
        ("--max-tasks", "0", "argument --max-tasks: must be at least 1, got 0"),
        ("--seed", "x", "argument --seed: expected an integer, got 'x'"),
    ],
)
def test_build_data_out_of_range_values_are_usage_errors(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        main(["build-data", flag, value, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and capsys.readouterr().err.rstrip().endswith(message)


def test_build_data_missing_source_and_occupied_output_are_usage_errors(tmp_path, capsys):
    assert main(["build-data", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert str(tmp_path / "nope") in _error(capsys, "build-data")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "abcd1234.json").write_text(json.dumps({**RAGGED_TASK, "train": RAGGED_TASK["test"]}))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["build-data", "--source", str(tmp_path / "src"), "--out", str(tmp_path / "full")]) == 2
    assert str(tmp_path / "full") in _error(capsys, "build-data")


def test_build_data_refuses_an_occupied_out_before_augmenting(tmp_path, capsys, monkeypatch):
    """Through the command: an occupied --out stops it before any task is read or augmented
    (tests/test_data_build.py holds build_dataset itself to this)."""
    from etrm.data import build

    # Augmentation needs the tasks: refused before they are read, nothing was augmented.
    monkeypatch.setattr(build, "load_tasks", lambda *a, **k: pytest.fail("read the tasks before checking --out"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["build-data", "--num-aug", "1000", "--out", str(tmp_path / "full")]) == 2
    assert str(tmp_path / "full") in _error(capsys, "build-data")


# Out-of-range values of every command's flags are usage errors (2) naming the flag, not a
# library ValueError from deeper down (1).
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["evaluate", "--checkpoint", str(TRM), "--data", str(FEWSHOT), "--batch-size", "0"],
            "argument --batch-size: must be at least 1, got 0",
        ),
        (
            ["evaluate", "--checkpoint", str(TRM), "--data", str(FEWSHOT), "--max-eval-groups", "-1"],
            "argument --max-eval-groups: must be at least 1, got -1",
        ),
        (
            ["score", "--predictions", str(TRM), "--data", str(FEWSHOT), "--pass-ks", "1", "0"],
            "argument --pass-ks: must be at least 1, got 0",
        ),
        (["investigate", "-n", "-1"], "argument -n: must be at least 0, got -1"),
        (
            ["experiment1", "--trm-checkpoint", str(TRM), "--data", str(FEWSHOT), "--out", "o", "--steps", "0"],
            "argument --steps: must be at least 1, got 0",
        ),
    ],
)
def test_out_of_range_flag_values_are_usage_errors_in_every_command(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err.rstrip().endswith(message)


def test_evaluate_on_cuda_without_cuda_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["evaluate", "--checkpoint", str(TRM), "--data", str(FEWSHOT), "--device", "cuda"]) == 2
    assert _error(capsys, "evaluate") == "--device cuda but CUDA is not available to this torch build"


# --- checkpoints -----------------------------------------------------------------------------


def test_inspect_truncated_checkpoint(truncated, capsys):
    assert main(["inspect", str(truncated)]) == 2  # 1 would read as "holds NaN/Inf"
    assert _error(capsys, "inspect").startswith(f"{truncated}: truncated or corrupt checkpoint")


def test_verify_decoder_missing_checkpoint(tmp_path, capsys):
    assert main(["verify-decoder", "--trm", str(TRM), "--etrm", str(tmp_path / "nope")]) == 2
    assert _error(capsys, "verify-decoder") == f"{tmp_path / 'nope'}: checkpoint not found"


# --- evaluate and score ----------------------------------------------------------------------


def test_evaluate_dataset_of_another_canvas(capsys):
    assert main(["evaluate", "--checkpoint", str(TRM), "--data", str(OFFICIAL_DATA)]) == 1
    assert _error(capsys, "evaluate") == f"{OFFICIAL_DATA}: seq_len 900, but the checkpoint's model expects 100"


def test_evaluate_truncated_checkpoint(truncated, capsys):
    assert main(["evaluate", "--checkpoint", str(truncated), "--data", str(FEWSHOT)]) == 1
    assert str(truncated) in _error(capsys, "evaluate")


def test_score_wrong_prediction_dump(tmp_path, capsys):
    # A checkpoint is a dict of tensors too, but not of predictions.
    assert main(["score", "--predictions", str(TRM), "--data", str(OFFICIAL_DATA)]) == 1
    assert _error(capsys, "score").startswith(f"prediction file {TRM} has no key 'inputs'")
    (tmp_path / "notes.txt").write_text("not a torch file")
    assert main(["score", "--predictions", str(tmp_path / "notes.txt"), "--data", str(OFFICIAL_DATA)]) == 1
    message = _error(capsys, "score")  # torch's text runs over many lines: the first stands for it
    assert "notes.txt could not be read" in message and message.endswith("(more with ETRM_DEBUG=1)")


# --- investigate and bench -------------------------------------------------------------------


def test_investigate_missing_artifact_stops_before_pytest(tmp_path, capsys):
    assert main(["investigate", "--data", str(tmp_path / "nope"), "-m", "hypothesis5"]) == 2
    assert _error(capsys, "investigate") == f"--data {tmp_path / 'nope'}: built dataset directory not found"


def test_bench_flag_that_cannot_be_honoured(capsys):
    assert main(["bench", "recursion", "--repeat", "0"]) == 2
    assert _error(capsys, "bench recursion") == "--repeat and --threads must be at least 1"


def test_etrm_debug_lets_the_exception_through(ragged, tmp_path, monkeypatch):
    monkeypatch.setenv("ETRM_DEBUG", "1")
    with pytest.raises(TaskValidationError, match="ragged grid"):
        main(["build-data", "--source", str(ragged), "--out", str(tmp_path / "out")])


def _commands(parser) -> list[str]:
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return list(subparsers.choices)


def test_a_command_imports_only_its_own_module_and_help_lists_every_command():
    assert _commands(build_parser(["build-data", "--source", "arc1"])) == ["build-data"]
    assert _commands(build_parser(["inspect", "step_1"])) == ["inspect", "verify-decoder"]  # one module, two commands
    assert _commands(build_parser(["--help"])) == _commands(build_parser(["no-such-command"])) == list(COMMANDS)


def test_the_installed_command_prints_no_traceback(ragged, tmp_path):
    """Through a real process (one; `etrm build-data` does not import torch): the console entry point,
    stderr and the exit status. ETRM_DEBUG is tested in-process above."""
    command = [
        str(Path(sys.executable).parent / "etrm"),
        "build-data",
        "--source",
        str(ragged),
        "--out",
        str(tmp_path / "o"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "ETRM_DEBUG"}
    plain = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.startswith("etrm build-data: error: training task abcd1234") and plain.stderr.count("\n") == 1

"""The investigation on artifacts written by the official TRM and origin ETRM code
(fixtures/interop, see its README.md and EXPECTED.md): every cell EXPECTED.md marks clean
gives no evidence, every true finding is found, and variants made from corpus files
(a renamed key, a NaN tensor, a drifted decoder under a frozen config, a leaked
evaluation puzzle) give evidence from the check that should find it.

Each case is one `etrm investigate` run in a subprocess, as a user would type it, except the
one in the default suite, which calls the same command in-process; the others are `slow`
(`pytest --runslow`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
TRM_BF16 = CORPUS / "official" / "trm-bf16" / "step_100"
TRM_FP32 = CORPUS / "official" / "trm-fp32" / "step_100"
OFFICIAL_DATA = CORPUS / "official" / "data"
FEWSHOT = CORPUS / "origin" / "fewshot"
NO_EVIDENCE, EVIDENCE = "no evidence", "evidence found"
# Rows that must never read "evidence found" or "error" on a clean artifact.
CLEAN = (NO_EVIDENCE,)


def investigate(tmp_path: Path, *args: str, markers: str, in_process: bool = False) -> tuple[int, dict[str, dict], str]:
    """Run `etrm investigate` (a subprocess, or `etrm.cli.main` in this one) and return its
    exit status, rows by hypothesis and output."""
    out = tmp_path / "verdict.json"
    # -n 0: in one process, as the suite's own workers already fill the cores.
    argv = ["investigate", "-m", markers, "-n", "0", "--verdict-json", str(out), *args]
    if in_process:  # the default run's case: the same command without a second torch start-up
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from etrm.cli import main

        text = StringIO()
        with redirect_stdout(text), redirect_stderr(text):
            status = main(argv)
        output = text.getvalue()
    else:
        run = subprocess.run([sys.executable, "-m", "etrm.cli", *argv], capture_output=True, text=True, timeout=900)
        status, output = run.returncode, run.stdout + run.stderr
    rows = {r["hypothesis"]: r for r in json.loads(out.read_text())["rows"]} if out.is_file() else {}
    return status, rows, output


def failed_checks(tmp_path: Path) -> set[str]:
    """Names of the checks (not negative controls) that failed in the last run's verdict JSON."""
    tests = json.loads((tmp_path / "verdict.json").read_text())["tests"]
    return {c["name"] for t in tests for c in t["checks"] if c["status"] == "fail" and not c.get("negative_control")}


def verdicts(rows: dict[str, dict]) -> dict[str, str]:
    return {h: r["verdict"] for h, r in rows.items()}


def test_clean_official_checkpoint_alone_reads_no_evidence(tmp_path):
    """The issue's example: a clean official-trainer TRM checkpoint alone gives
    'hypothesis1: no evidence' and exit 0 (checks needing an ETRM are listed as not run)."""
    status, rows, output = investigate(
        tmp_path, "--trm-checkpoint", str(TRM_FP32), markers="hypothesis1", in_process=True
    )
    assert rows["hypothesis1"]["verdict"] == NO_EVIDENCE, output[-3000:]
    assert status == 0, output[-3000:]
    assert rows["hypothesis1"]["not_run"] >= 1 and set(rows["hypothesis1"]["reads"]["trm_checkpoint"]) == {"user"}


@pytest.mark.slow
def test_official_bf16_checkpoint_with_the_official_build(tmp_path):
    status, rows, output = investigate(
        tmp_path,
        "--trm-checkpoint",
        str(TRM_BF16),
        "--data",
        str(OFFICIAL_DATA),
        markers="hypothesis1 or hypothesis5 or hypothesis6",
    )
    assert verdicts(rows) == {"hypothesis1": NO_EVIDENCE, "hypothesis5": EVIDENCE, "hypothesis6": NO_EVIDENCE}, output[
        -3000:
    ]
    # The true finding: the official builder trains the evaluation tasks' demonstrations.
    assert rows["hypothesis5"]["first_failure"]["check"] == "no_evaluation_leakage"


ORIGIN_RUNS = {  # run -> what EXPECTED.md says H1 / H4 / H5 / H6 read (H2 needs the origin code for all but standard)
    "etrm-standard": {"hypothesis1": NO_EVIDENCE, "hypothesis2": NO_EVIDENCE},
    "etrm-standard-unfrozen": {"hypothesis1": NO_EVIDENCE, "hypothesis2": NO_EVIDENCE},
    "etrm-hybrid-variational": {"hypothesis1": NO_EVIDENCE},
    "etrm-lpn-variational": {"hypothesis1": NO_EVIDENCE},
    "etrmtrm-trm-style": {"hypothesis1": NO_EVIDENCE},
    "etrmtrm-recurrent-standard": {"hypothesis1": NO_EVIDENCE},
}


@pytest.mark.slow
@pytest.mark.parametrize("run", ORIGIN_RUNS)
def test_origin_run_with_its_decoder_and_fewshot_build(run, tmp_path):
    status, rows, output = investigate(
        tmp_path,
        "--trm-checkpoint",
        str(TRM_BF16),
        "--etrm-checkpoint",
        str(CORPUS / "origin" / run / "step_50"),
        "--data",
        str(FEWSHOT),
        markers="hypothesis1 or hypothesis2 or hypothesis4 or hypothesis5 or hypothesis6",
    )
    expected = {**ORIGIN_RUNS[run], "hypothesis5": NO_EVIDENCE, "hypothesis6": NO_EVIDENCE}
    if run.startswith("etrm-"):  # the true finding: L_cycles 6 on a decoder trained with 4, exploration 0.5
        expected["hypothesis4"] = EVIDENCE
    got = verdicts(rows)
    assert {h: got.get(h) for h in expected} == expected, output[-4000:]
    assert all(v not in (EVIDENCE, "error") for h, v in got.items() if h not in expected), output[-4000:]
    if "hypothesis4" in expected:
        message = rows["hypothesis4"]["first_failure"]["message"]
        assert "L_cycles 6 vs TRM 4" in message and "halt_exploration_prob 0.5" in message, message


# --- variants made from corpus files: each must give evidence from the right check ---------------


def _copy_checkpoint(src: Path, dst_dir: Path, edit) -> Path:
    dst_dir.mkdir(parents=True)
    shutil.copy(src.parent / "all_config.yaml", dst_dir / "all_config.yaml")
    state = torch.load(src, map_location="cpu", weights_only=True)
    torch.save(edit(state), dst_dir / src.name)
    return dst_dir / src.name


def _renamed_key(state):
    return {k.replace("layers.0.self_attn.qkv_proj", "layers.0.self_attn.qkv"): v for k, v in state.items()}


def _one_nan(state):
    key = "_orig_mod.model.inner.L_level.layers.1.mlp.down_proj.weight"
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    return state


@pytest.mark.slow
@pytest.mark.parametrize("edit", [_renamed_key, _one_nan], ids=["renamed-key", "nan-tensor"])
def test_broken_official_checkpoint_gives_h1_evidence(edit, tmp_path):
    broken = _copy_checkpoint(TRM_FP32, tmp_path / "broken", edit)
    status, rows, output = investigate(tmp_path, "--trm-checkpoint", str(broken), markers="hypothesis1")
    assert rows["hypothesis1"]["verdict"] == EVIDENCE, output[-3000:]
    assert rows["hypothesis1"]["first_failure"]["check"] == "decoder_loads_bitwise"
    assert status == 1


@pytest.mark.slow
def test_frozen_config_with_a_drifted_decoder_gives_h1_evidence(tmp_path):
    """etrm-standard's config keeps the decoder frozen; the unfrozen run's decoder drifted."""
    drifted = torch.load(CORPUS / "origin" / "etrm-standard-unfrozen" / "step_50", weights_only=True)
    mislabelled = _copy_checkpoint(
        CORPUS / "origin" / "etrm-standard" / "step_50", tmp_path / "mislabelled", lambda state: drifted
    )
    status, rows, output = investigate(
        tmp_path,
        "--trm-checkpoint",
        str(TRM_BF16),
        "--etrm-checkpoint",
        str(mislabelled),
        "--data",
        str(FEWSHOT),
        markers="hypothesis1",
    )
    assert rows["hypothesis1"]["verdict"] == EVIDENCE, output[-3000:]
    # Two checks rightly fail (which one the row shows first depends on test order): the
    # drift check, from the config's freezing, and the decoder-vs-TRM comparison.
    assert failed_checks(tmp_path) == {"decoder_drift_matches_freezing", "model_decoder_matches_trm"}


@pytest.mark.slow
def test_leaked_evaluation_puzzle_gives_h5_evidence(tmp_path):
    from etrm.suite.broken import plant_evaluation_example

    leaked = plant_evaluation_example(FEWSHOT, tmp_path / "leaked")
    status, rows, output = investigate(tmp_path, "--data", str(leaked), markers="hypothesis5")
    assert rows["hypothesis5"]["verdict"] == EVIDENCE, output[-3000:]
    assert rows["hypothesis5"]["first_failure"]["check"] == "no_evaluation_leakage"


def test_official_prediction_dump_scores_as_the_official_evaluator(capsys):
    """`etrm score` on the official trainer's dump: pass@1 0.5, as the official evaluator gives."""
    from etrm.cli import main

    assert (
        main(
            [
                "score",
                "--predictions",
                str(CORPUS / "official" / "preds" / "step_1_all_preds.0"),
                "--data",
                str(OFFICIAL_DATA),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "8 tasks evaluated" in out
    scores = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.strip().startswith("pass@")}
    assert scores == {f"pass@{k}": 0.5 for k in (1, 2, 5, 10, 100, 1000)}, out

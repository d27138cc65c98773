"""`etrm experiment1` at the investigation's scale: resume, checkpoints audited by `etrm
investigate`, the origin's hydra config, several ranks under torchrun, the user's model
code and W&B offline."""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.bundled import fixtures_root
from etrm.cli import main
from etrm.metrics_log import read_metrics_log
from etrm.testing.artifacts import BUNDLED

TRM = fixtures_root() / BUNDLED["trm_checkpoint"]
FEWSHOT = fixtures_root() / BUNDLED["data_dir"]
ORIGIN_CONFIG = fixtures_root() / "origin_config" / "cfg_test_frozen_decoder.yaml"
FOREIGN = Path(__file__).resolve().parent / "foreign_repo"
TINY = ["--steps", "6", "--batch-size", "2", "--eval-every", "3", "--max-eval-groups", "1", "--checkpoint-every", "2"]
# Per-rank values (the rank's own rows) and the run's description: not compared across world sizes.
PER_RUN = ("run/world_size", "run/device")


def experiment1(out, *extra, trm=TRM):
    with contextlib.redirect_stdout(io.StringIO()):
        return main(
            ["experiment1", "--trm-checkpoint", str(trm), "--data", str(FEWSHOT), "--out", str(out), *TINY, *extra]
        )


@pytest.fixture
def no_plots(monkeypatch):
    import etrm.report.markdown

    def unavailable(*args, **kwargs):
        raise ImportError("plots off in this test")

    monkeypatch.setattr(etrm.report.markdown, "plot_metrics", unavailable)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """One uninterrupted tiny run, the reference of the resume and multi-rank tests."""
    out = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as patch:
        import etrm.report.markdown

        patch.setattr(
            etrm.report.markdown, "plot_metrics", lambda *a, **k: (_ for _ in ()).throw(ImportError("no plots"))
        )
        assert experiment1(out) == 0
    return out


def test_a_stopped_and_resumed_run_writes_the_same_log(whole_run, tmp_path, monkeypatch, no_plots):
    from etrm.training import Trainer

    step = Trainer.step

    def killed_after_3(self, batch):  # checkpoints at 2: step 3's lines must be redone
        if self.step_count == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", killed_after_3)
    assert experiment1(tmp_path) == 130
    assert [r["step"] for r in read_metrics_log(tmp_path / "metrics.jsonl") if "train/lm_loss" in r] == [1, 2, 3]
    monkeypatch.setattr(Trainer, "step", step)
    assert experiment1(tmp_path, "--resume") == 0
    assert (tmp_path / "metrics.jsonl").read_text() == (whole_run / "metrics.jsonl").read_text()
    assert sorted(p.name for p in tmp_path.glob("step_*") if "." not in p.name) == ["step_2", "step_4", "step_6"]


def test_resume_refuses_another_run_and_a_folder_without_checkpoint(whole_run, tmp_path, capsys):
    assert experiment1(tmp_path, "--resume") == 2
    assert "resume.pt: not found; --resume continues a run that wrote a checkpoint" in capsys.readouterr().err
    assert experiment1(whole_run, "--resume", "--seed", "1") == 1
    assert "--resume of a different run (seed: 0 then, 1 now)" in capsys.readouterr().err


def test_the_checkpoint_is_in_the_official_layout_beside_its_config(whole_run):
    from etrm.checkpoints import find_saved_config, read_state_dict

    state = read_state_dict(whole_run / "step_6")
    assert state and all(k.startswith("_orig_mod.model.") and ".module." not in k for k in state)
    saved = find_saved_config(whole_run / "step_6")
    assert saved is not None and (whole_run / "all_config.yaml").is_file()


@pytest.mark.slow
def test_etrm_investigate_audits_the_runs_own_checkpoint(whole_run, tmp_path):
    """H1 on a frozen run's step_N: the decoder is the TRM's, bitwise. (The default run covers
    the checkpoint's layout in test_the_checkpoint_is_in_the_official_layout_beside_its_config.)"""
    verdict = tmp_path / "verdict.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "etrm",
            "investigate",
            "--trm-checkpoint",
            str(TRM),
            "--etrm-checkpoint",
            str(whole_run / "step_6"),
            "--data",
            str(FEWSHOT),
            "-m",
            "hypothesis1",
            "--verdict-json",
            str(verdict),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    text = verdict.read_text()
    assert "hypothesis1" in text and "evidence found" not in text.lower(), text[:3000]


# --- the origin's config ---------------------------------------------------------------------


def test_the_origin_config_composes_through_its_defaults_and_maps_onto_the_run():
    pytest.importorskip("hydra", reason="hydra-core (the test extra) composes origin configs")
    from etrm.data.layout import load_metadata
    from etrm.experiment1.settings import settings_from_config

    composed = settings_from_config(ORIGIN_CONFIG, FEWSHOT)
    meta = load_metadata(FEWSHOT, "train")
    steps = int(20000 * meta.total_groups * meta.mean_puzzle_examples / 256)  # the origin's total_steps
    assert composed.settings["steps"] == steps and composed.settings["eval_every"] == steps // 2
    assert (
        composed.settings.items()
        >= {
            "lr": 3e-4,
            "warmup_steps": 1000,
            "global_batch_size": 256,
            "max_train_groups": 32,
            "max_eval_groups": 4,
            "freeze_decoder_steps": 999999,
            "encoder_lr_scale": 1.0,
            "grad_clip_norm": 1.0,
        }.items()
    )
    assert composed.doc["arch"]["L_cycles"] == 6 and composed.doc["arch"]["name"].endswith("@TRMWithEncoder")
    assert composed.trm_checkpoint.endswith("step_518071")
    assert composed.ignored["unknown_key_for_tests"] == "not a setting etrm experiment1 has"
    assert "ema" in composed.ignored and "lr" not in composed.ignored


def test_the_config_file_runs_with_flags_overriding_and_warns_of_what_it_ignores(tmp_path, capsys, no_plots):
    pytest.importorskip("hydra", reason="hydra-core (the test extra) composes origin configs")
    assert experiment1(tmp_path, "--config", str(ORIGIN_CONFIG)) == 0
    err = capsys.readouterr().err
    assert "unknown_key_for_tests changes nothing in this run" in err
    assert "arch.L_cycles changes nothing in this run (6 in the config, 2 in the TRM checkpoint" in err
    train = [r for r in read_metrics_log(tmp_path / "metrics.jsonl") if "train/lm_loss" in r]
    assert len(train) == 6 and all(r["frozen/decoder"] == 1.0 for r in train)  # --steps beat epochs; 999999 = forever
    assert train[-1]["lr/encoder"] == pytest.approx(3e-4 * 6 / 1000)  # the config's lr and 1000-step warmup


# --- several ranks ---------------------------------------------------------------------------


def _torchrun(out: Path, nproc: int, *extra: str, device: str = "cpu") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(29500 + os.getpid() % 400),
            "-m",
            "etrm",
            "experiment1",
            "--trm-checkpoint",
            str(TRM),
            "--data",
            str(FEWSHOT),
            "--out",
            str(out),
            *TINY,
            "--device",
            device,
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        assert set(a) == set(b)
        for key, value in b.items():
            if key in PER_RUN:
                continue
            if isinstance(value, float) and not math.isnan(value):
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["step"], key)
            elif not (isinstance(value, float) and math.isnan(a[key])):
                assert a[key] == value, (a["step"], key)


@pytest.mark.slow
def test_two_gloo_ranks_under_torchrun_log_what_one_process_logs(whole_run, tmp_path):
    """The whole command on 2 CPU ranks (gloo, DDP encoder, sharded data and evaluation) at the
    same global batch. The default run covers the 2-rank trainer in tests/test_training_distributed.py
    only as slow too; the 1-rank path of this command is the default run's whole_run."""
    done = _torchrun(tmp_path, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics_log(tmp_path / "metrics.jsonl")
    assert records[0]["run/world_size"] == 2 and records[0]["run/device"] == "cpu"
    assert_same_metrics(records, read_metrics_log(whole_run / "metrics.jsonl"))
    assert "2 processes on cpu" in done.stdout


def test_a_global_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path, monkeypatch, capsys):
    import torch

    from etrm.experiment1.distributed import Processes

    monkeypatch.setattr(
        "etrm.experiment1.distributed.start",
        lambda device: Processes(0, 4, torch.device("cpu")),
    )
    assert experiment1(tmp_path, "--batch-size", "6") == 2
    assert "--global-batch-size 6 does not split over 4 processes" in capsys.readouterr().err


@pytest.mark.gpu
def test_two_nccl_ranks_on_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices for 2 NCCL ranks; {torch.cuda.device_count()} visible")
    done = _torchrun(tmp_path, 2, device="cuda")
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics_log(tmp_path / "metrics.jsonl")
    assert records[0]["run/world_size"] == 2 and records[0]["run/device"].startswith("cuda")


# --- the user's model code and W&B --------------------------------------------------------------


def test_the_users_model_code_runs_the_experiment(tmp_path, capsys, no_plots):
    """tests/foreign_repo's ETRM (written to the origin's interface) with the bundled TRM's decoder."""
    pytest.importorskip("hydra", reason="hydra-core (the test extra) composes origin configs")
    import yaml

    config = tmp_path / "cfg" / "run.yaml"
    config.parent.mkdir()
    arch = yaml.safe_load((fixtures_root() / "checkpoints" / "etrm_frozen" / "all_config.yaml").read_text())
    config.write_text(yaml.safe_dump(arch))
    assert experiment1(tmp_path / "out", "--config", str(config), "--model-code", str(FOREIGN)) == 0, (
        capsys.readouterr().err
    )
    train = [r for r in read_metrics_log(tmp_path / "out" / "metrics.jsonl") if "train/lm_loss" in r]
    assert len(train) == 6 and all(r["grad/encoder_norm_preclip"] > 0 for r in train)
    assert all(r["grad/decoder_norm_preclip"] == 0.0 for r in train)


@pytest.mark.slow
def test_wandb_offline_history_reads_back_as_the_metrics_log(whole_run, tmp_path, monkeypatch, no_plots):
    """wandb.init costs seconds; the default run covers the logged records through whole_run's metrics.jsonl."""
    pytest.importorskip("wandb", reason="wandb (the test extra) is what --wandb-project logs to")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert experiment1(tmp_path, "--wandb-project", "etrm-tests") == 0
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # what `wandb sync` uploads
    history = read_metrics_log(tmp_path / "wandb-history.jsonl")
    ours = read_metrics_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in history] == [r["step"] for r in ours]
    numbers = [{k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} for r in ours]
    assert_same_metrics([{k: r[k] for k in n} for r, n in zip(history, numbers)], numbers)


@pytest.fixture(scope="module")
def early_halting_trm(tmp_path_factory):
    """The bundled TRM with its Q head made to halt at once: q_halt's weights zeroed and its bias
    +5, so q_halt = 5 > 0 on every input (the decoder is frozen: it stays so), and half the
    samples explore (halt_exploration_prob 0.5). A sample then runs a second or third ACT step
    only when its exploration draw holds it, so each step's train/count and train/steps are the
    torch RNG's draws. The bundled TRM (q_halt near -5) always runs its 3 steps, which any draws
    allow, so there a resume that lost the RNG state still wrote the same log."""
    import json

    import torch
    import yaml

    folder = tmp_path_factory.mktemp("early_halting_trm")
    state = torch.load(TRM, map_location="cpu", weights_only=True)
    state["_orig_mod.model.inner.q_head.weight"][0].zero_()
    state["_orig_mod.model.inner.q_head.bias"][0] = 5.0
    torch.save(state, folder / TRM.name)
    config = yaml.safe_load((TRM.parent / "all_config.yaml").read_text())
    config["arch"]["halt_exploration_prob"] = 0.5
    (folder / "all_config.yaml").write_text(yaml.safe_dump(config))
    meta = json.loads((TRM.parent / f"{TRM.name}.etrm.json").read_text())
    meta["model_config"]["halt_exploration_prob"] = 0.5
    (folder / f"{TRM.name}.etrm.json").write_text(json.dumps(meta))
    return folder / TRM.name


def test_a_resumed_run_whose_log_depends_on_exploration_draws_writes_the_same_log(
    early_halting_trm, tmp_path, monkeypatch, no_plots
):
    """Stopped after step 3 (checkpoint at 2) and resumed: the log must equal the uninterrupted
    run's, which holds only if the resumed ranks draw what they would have drawn."""
    from etrm.training import Trainer

    short = ("--steps", "4", "--eval-every", "100")  # after TINY: these win
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert experiment1(whole, *short, trm=early_halting_trm) == 0
    counts = [r["train/count"] for r in read_metrics_log(whole / "metrics.jsonl") if "train/count" in r]
    assert any(c < 2 for c in counts[2:]), counts  # after the checkpoint, exploration held a sample
    step = Trainer.step

    def killed_after_3(self, batch):
        if self.step_count == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", killed_after_3)
    assert experiment1(stopped, *short, trm=early_halting_trm) == 130
    monkeypatch.setattr(Trainer, "step", step)
    assert experiment1(stopped, *short, "--resume", trm=early_halting_trm) == 0
    assert (stopped / "metrics.jsonl").read_text() == (whole / "metrics.jsonl").read_text()

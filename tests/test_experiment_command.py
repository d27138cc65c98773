"""`etrm experiment1`: Experiment 1 end to end on a checkpoint and few-shot dataset, decided
from the run's own log; Ctrl-C, bad inputs and determinism."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re

import pytest

from etrm.bundled import fixtures_root
from etrm.checks.experiment1 import decide_scenario, run_frozen_decoder_experiment
from etrm.cli import main
from etrm.metrics_log import read_metrics_log
from etrm.testing.artifacts import BUNDLED

TRM = fixtures_root() / BUNDLED["trm_checkpoint"]
FEWSHOT = fixtures_root() / BUNDLED["data_dir"]
INTEROP = fixtures_root() / "interop"
# Short enough for the default suite, long enough for a decision (10 training lines, 3 evaluations).
SHORT = ["--steps", "10", "--batch-size", "2", "--eval-every", "5", "--max-eval-groups", "1"]


def experiment1(trm, data, out, *extra):
    return main(["experiment1", "--trm-checkpoint", str(trm), "--data", str(data), "--out", str(out), *SHORT, *extra])


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment1")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = experiment1(TRM, FEWSHOT, out)
    return status, out, printed.getvalue()


@pytest.fixture
def no_plots(monkeypatch):
    """Reports without PNGs (as without matplotlib): plots are the bundled run's and
    tests/test_report.py's subject, and cost seconds each on a busy CPU."""
    import etrm.report.markdown

    def unavailable(*args, **kwargs):
        raise ImportError("plots off in this test")

    monkeypatch.setattr(etrm.report.markdown, "plot_metrics", unavailable)


def test_the_command_decides_a_scenario_from_its_own_log(bundled_run):
    status, out, printed = bundled_run
    assert status == 0
    records = read_metrics_log(out / "metrics.jsonl")
    result = decide_scenario(records)
    assert result.passed, result.message
    scenario = result.numbers["scenario"]
    assert f"etrm experiment1: frozen decoder: {scenario}" in printed and result.message in printed
    assert f"loss_drop = {result.numbers['loss_drop']:.4g}" in printed
    report = (out / "report.md").read_text()
    assert scenario in report and "frozen decoder, 10 of 10 steps" in report
    if importlib.util.find_spec("matplotlib"):
        assert (out / "grad_norms.png").is_file()


def test_the_run_is_the_investigations_setup(bundled_run):
    _, out, _ = bundled_run
    records = read_metrics_log(out / "metrics.jsonl")
    train = [r for r in records if "train/lm_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(r["frozen/decoder"] == 1.0 and r["grad/decoder_norm_preclip"] == 0.0 for r in train)
    assert all("grad/encoder_norm_preclip" in r and r["grad/encoder_norm_postclip"] <= 1.0 + 1e-6 for r in train)
    assert train[-1]["lr/encoder"] == pytest.approx(3e-4)  # after the 10-step warmup
    assert [r["step"] for r in records if "eval/ARC/pass@1" in r] == [0, 5, 10]  # baseline first
    assert records[0]["pretrained_decoder/params_missing"] == 0


def test_with_unfrozen_writes_the_comparison_beside_it(tmp_path, no_plots, capsys):
    assert experiment1(TRM, FEWSHOT, tmp_path, "--with-unfrozen", "--steps", "3") == 0
    train = [r for r in read_metrics_log(tmp_path / "unfrozen" / "metrics.jsonl") if "train/lm_loss" in r]
    assert len(train) == 3 and all(r["frozen/decoder"] == 0.0 for r in train)
    assert all(r["grad/decoder_norm_preclip"] > 0 for r in train)
    assert (tmp_path / "unfrozen" / "report.md").is_file()
    printed = capsys.readouterr().out
    assert "frozen decoder: inconclusive" in printed and "unfrozen decoder (comparison): inconclusive" in printed


def test_ctrl_c_leaves_a_valid_log_and_the_report_of_the_steps_done(tmp_path, monkeypatch, no_plots, capsys):
    from etrm.training import Trainer

    step = Trainer.step

    def interrupted_at_4(self, batch):
        if self.step_count == 3:
            raise KeyboardInterrupt
        return step(self, batch)

    monkeypatch.setattr(Trainer, "step", interrupted_at_4)
    assert experiment1(TRM, FEWSHOT, tmp_path, "--with-unfrozen") == 130
    records = read_metrics_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "train/lm_loss" in r] == [1, 2, 3]
    assert "frozen decoder, 3 of 10 steps (interrupted)" in (tmp_path / "report.md").read_text()
    captured = capsys.readouterr()
    assert "interrupted" in captured.err and "frozen decoder: inconclusive" in captured.out
    assert not (tmp_path / "unfrozen").exists()  # Ctrl-C stops the whole command


def test_the_same_seed_gives_the_same_log(tmp_path):
    def log(name, seed):
        run_frozen_decoder_experiment(
            TRM,
            FEWSHOT,
            tmp_path / name,
            steps=3,
            eval_every=3,
            batch_size=2,
            seed=seed,
            max_eval_groups=1,
            progress=False,
        )
        return [json.dumps(r, sort_keys=True) for r in read_metrics_log(tmp_path / name)]

    first = log("a.jsonl", 0)
    assert log("b.jsonl", 0) == first
    assert log("c.jsonl", 1)[1:] != first[1:]  # the seed matters (line 0: what was loaded)


@pytest.mark.parametrize(
    "trm, data, status, message",
    [
        (
            TRM,
            INTEROP / "origin" / "fewshot",
            1,
            r"origin/fewshot/train/dataset.json: seq_len 900, but the checkpoint .*trm/step_final was trained at seq_len 100",
        ),
        (
            TRM,
            fixtures_root() / BUNDLED["trm_data_dir"],
            1,
            r"data/trm/train/all__num_demos.npy: not found, so .* TRM-layout",
        ),
        (TRM.parent, FEWSHOT, 1, r"checkpoints/trm: is a directory; give the checkpoint file inside it"),
        (TRM.parent / "step_9", FEWSHOT, 2, r"trm/step_9: not found \(--trm-checkpoint\)"),
        (TRM, FEWSHOT / "nope", 2, r"fewshot/nope: not found \(--data\)"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, capsys, trm, data, status, message):
    assert experiment1(trm, data, tmp_path) == status
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("etrm experiment1: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "metrics.jsonl").exists()


def test_an_existing_log_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert experiment1(TRM, FEWSHOT, tmp_path) == 2
    assert "exists; a new run never overwrites a log" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_the_official_trm_layout_build_is_refused_with_the_reason(tmp_path, capsys):
    trm = INTEROP / "official" / "trm-bf16" / "step_100"
    assert experiment1(trm, INTEROP / "official" / "data", tmp_path) == 1
    assert "the evaluation tasks' demonstrations in its train split" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_on_the_official_checkpoint_at_canvas_30(tmp_path, capsys):
    """The interop corpus: official-trainer TRM (hidden 64, H 3, L 4, bfloat16 in its config)
    with the origin builder's few-shot build of the same tasks, 30x30 canvas."""
    trm = INTEROP / "official" / "trm-bf16" / "step_100"
    assert (
        experiment1(trm, INTEROP / "origin" / "fewshot", tmp_path, "--eval-every", "10", "--forward-dtype", "float32")
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "H_cycles 3, L_cycles 4, L_layers 2, hidden_size 64, halt_max_steps 16, forward_dtype float32, "
        "seq_len 900, max_demos 5" in out
    )
    result = decide_scenario(read_metrics_log(tmp_path / "metrics.jsonl"))
    assert result.passed and result.numbers["scenario"] in out, result.message

"""Tiny end-to-end runs on the bundled ARC-AGI-1 fixtures: the loss falls, the log and the
evaluation work together. The basis of experiment1 (the frozen-decoder run)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from etrm.config import tiny_config
from etrm.data import fixture_data_dir
from etrm.data.datasets import FewShotPuzzleDataset, PuzzleDataset, load_identifiers
from etrm.evaluation import ArcEvaluator
from etrm.inference import evaluate
from etrm.models import build_model
from etrm.training import TrainingConfig, read_metrics_log, train

BATCH = 4


def fewshot(split: str, config, **kwargs) -> FewShotPuzzleDataset:
    return FewShotPuzzleDataset(fixture_data_dir("fewshot"), split, BATCH, max_demos=config.max_demos, **kwargs)


def losses(path) -> list[float]:
    return [r["train/lm_loss"] for r in read_metrics_log(path) if "train/lm_loss" in r]


def run_etrm(tmp_path, steps: int, seed: int = 0, **model_overrides):
    torch.manual_seed(seed)
    config = tiny_config("etrm", **model_overrides)
    log = tmp_path / "metrics.jsonl"
    trainer = train(
        build_model(config),
        fewshot("train", config, seed=seed),
        TrainingConfig(global_batch_size=BATCH, lr=3e-3, warmup_steps=5, ema_rate=0.9, seed=seed),
        steps=steps,
        metrics_log=log,
        eval_every=steps,
        eval_dataset=fewshot("test", config, test_mode=True),
        evaluator=ArcEvaluator.from_data_dir(fixture_data_dir("fewshot")),
        progress=False,
    )
    return trainer, log


def check_run(trainer, log, steps: int) -> None:
    curve = losses(log)
    assert trainer.step_count == len(curve) == steps
    # Measured over seeds 0-5 (40 steps): the last 10 steps average 0.51-0.66 of the first 5.
    assert np.mean(curve[-10:]) < 0.8 * np.mean(curve[:5]), f"lm_loss did not fall: {np.round(curve, 2)}"
    records = read_metrics_log(log)
    evals = [r for r in records if "eval/ARC/pass@1" in r]
    assert len(evals) == 1 and evals[0]["step"] == steps and evals[0]["eval/tasks_evaluated"] == 4
    assert all(r["grad/encoder_norm_preclip"] > 0 for r in records if "grad/encoder_norm_preclip" in r)
    assert all(math.isfinite(r["encoder/cross_sample_std"]) for r in records if "encoder/cross_sample_std" in r)


def test_etrm_loss_falls_on_the_fixture_and_the_run_is_evaluated(tmp_path):
    # One H and one L cycle keep this under 2 s; the slow variant below runs the full tiny config.
    trainer, log = run_etrm(tmp_path, steps=40, H_cycles=1, L_cycles=1)
    check_run(trainer, log, 40)


@pytest.mark.slow
def test_etrm_loss_falls_with_the_full_tiny_recursion(tmp_path):
    trainer, log = run_etrm(tmp_path, steps=60)
    check_run(trainer, log, 60)


def test_frozen_decoder_run_trains_only_the_encoder():
    # The shape of experiment1 in miniature: the decoder stays bitwise fixed, the loss still falls.
    torch.manual_seed(1)
    config = tiny_config("etrm", H_cycles=1, L_cycles=1)
    head = build_model(config)
    decoder = {n: p.detach().clone() for n, p in head.model.inner.named_parameters()}
    trainer = train(
        head,
        fewshot("train", config, seed=1),
        TrainingConfig(global_batch_size=BATCH, lr=3e-3, warmup_steps=0, freeze_decoder_steps=10**9),
        steps=6,
        progress=False,
    )
    assert all(torch.equal(p, decoder[n]) for n, p in head.model.inner.named_parameters())
    assert trainer.step_count == 6


def test_evaluate_with_the_arc_evaluator_scores_every_fixture_test_task():
    torch.manual_seed(0)
    config = tiny_config("etrm", H_cycles=1, L_cycles=1)
    head = build_model(config)
    dataset = fewshot("test", config, test_mode=True)
    result = evaluate(head, dataset, ArcEvaluator.from_data_dir(fixture_data_dir("fewshot")), progress=False)
    real_rows = sum(int((b["puzzle_identifiers"] != 0).sum()) for b in dataset)
    assert result.num_predictions == real_rows
    assert len(result.tasks_evaluated) == 4 and result.tasks_without_predictions == []
    assert 0.0 <= result.metrics["ARC/pass@1"] <= 1.0


@pytest.mark.slow
def test_trm_loss_falls_on_the_trm_fixture(tmp_path):
    torch.manual_seed(0)
    data = fixture_data_dir("trm")
    config = tiny_config("trm", num_puzzle_identifiers=len(load_identifiers(data)))
    head = build_model(config)
    log = tmp_path / "metrics.jsonl"
    train(
        head,
        PuzzleDataset(data, "train", BATCH, seed=0),
        TrainingConfig(global_batch_size=BATCH, lr=3e-3, warmup_steps=5),
        steps=80,
        metrics_log=log,
        progress=False,
    )
    curve = losses(log)
    assert np.mean(curve[-10:]) < 0.8 * np.mean(curve[:5]), f"lm_loss did not fall: {np.round(curve, 2)}"
    assert read_metrics_log(log)[-1]["lr/puzzle_emb"] == pytest.approx(1e-2)

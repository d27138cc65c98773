"""Golden regression values: any change to the numerics of a model class, encoder type,
data build or evaluator fails here with a readable diff until it is recorded on purpose
with `pytest --update-golden` (and so shows up in review). CPU float32 only (bfloat16 kernels
round differently by CPU instruction set); the official recursion and canvas are in one record."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from etrm.config import tiny_config
from etrm.models import build_model
from etrm.suite.support import TINY_ENCODER_MODELS, fewshot_batch
from etrm.testing.artifacts import BUNDLED, fixtures_root
from etrm.testing.golden import state_dict_digest

BUNDLED_DATA = fixtures_root() / BUNDLED["data_dir"]  # the 10x10 data the tiny models are sized for
MODELS = {"trm": dict(model_type="trm", num_puzzle_identifiers=64), **TINY_ENCODER_MODELS}


def digest_array(hexdigest: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hexdigest), dtype=np.uint8)  # integers: compared exactly


@pytest.fixture(scope="module")
def batch():
    return fewshot_batch(BUNDLED_DATA, tiny_config("etrm"), batch_size=2)


def episode_values(head, batch) -> dict:
    """Initial weights' digest, then every evaluation ACT step's outputs and loss."""
    values = {"init/state_dict_sha256": digest_array(state_dict_digest(head.state_dict()))}
    with torch.no_grad():
        carry = head.initial_carry(batch)
        for step in range(1, head.config.halt_max_steps + 1):
            carry, loss, metrics, out, _ = head(carry, batch)
            values |= {f"step{step}/logits": out["logits"], f"step{step}/q_halt_logits": out["q_halt_logits"],
                       f"step{step}/q_continue_logits": out["q_continue_logits"], f"step{step}/loss": loss}
            if "context" in out:
                values[f"step{step}/context"] = out["context"]
    return values


@pytest.mark.parametrize("name", MODELS)
def test_model_numerics_match_golden(name, batch, golden):
    settings = dict(MODELS[name])
    torch.manual_seed(0)
    head = build_model(tiny_config(settings.pop("model_type"), **settings)).eval()
    golden.check(f"model-{name}", episode_values(head, batch))


def test_official_recursion_at_canvas_30_matches_golden(canvas30_batch, golden):
    # H_cycles 3, L_cycles 4 as the official ARC-AGI-1 run, on real 30x30 queries; two ACT
    # steps, so the second starts from a carried state.
    torch.manual_seed(0)
    head = build_model(tiny_config("etrm", seq_len=900, H_cycles=3, L_cycles=4, halt_max_steps=2, max_demos=1)).eval()
    golden.check("model-etrm-official-recursion-canvas30", episode_values(head, canvas30_batch))


def test_data_build_matches_golden(tmp_path, golden):
    from etrm.data.build import build_dataset

    out = build_dataset(tmp_path / "build", mode="fewshot", num_aug=2, seed=0, canvas=10, progress=False,
                        task_ids=["017c7c7b", "0520fde7", "00576224"])
    import hashlib

    files = sorted(p for p in out.rglob("*") if p.is_file())
    golden.check("data-build-fewshot", {str(p.relative_to(out)): digest_array(hashlib.sha256(p.read_bytes()).hexdigest())
                                        for p in files})


def test_evaluator_metrics_match_golden(golden):
    from etrm.checks.h6_evaluator import mixed_predictions
    from etrm.data.datasets import load_identifiers, load_test_puzzles
    from etrm.evaluation import ArcEvaluator

    data = BUNDLED_DATA
    identifiers, puzzles = load_identifiers(data), load_test_puzzles(data)
    evaluator = ArcEvaluator(identifiers, puzzles)
    evaluator.begin_round()
    evaluator.update(*mixed_predictions(identifiers, puzzles, seed=1, canvas=10))
    result = evaluator.result()
    golden.check("evaluator-fixture-mixed", {k: float(v) for k, v in result.metrics.items()}
                 | {f"task/{t}": float(s[1]) for t, s in sorted(result.per_task.items())})

"""Golden regression values: any change to the numerics of a model class, encoder type,
data build or evaluator fails here with a readable diff until it is recorded on purpose
with `pytest --update-golden` (and so shows up in review). CPU float32 only (bfloat16 kernels
round differently by CPU instruction set); the official recursion and canvas are in one record."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from etrm.config import tiny_config
from etrm.data.datasets import fewshot_batch
from etrm.models import build_model
from etrm.suite.support import TINY_ENCODER_MODELS
from etrm.testing.artifacts import BUNDLED, fixtures_root

BUNDLED_DATA = fixtures_root() / BUNDLED["data_dir"]  # the 10x10 data the tiny models are sized for
MODELS = {"trm": dict(model_type="trm", num_puzzle_identifiers=64), **TINY_ENCODER_MODELS}


def digest_array(hexdigest: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hexdigest), dtype=np.uint8)  # integers: compared exactly


@pytest.fixture(scope="module")
def batch():
    return fewshot_batch(BUNDLED_DATA, tiny_config("etrm"), batch_size=2)


def init_fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """Mean, std, min, max and the first 8 values of one initial weight, compared at float32's
    tolerance: initialisers round by CPU instruction set (trunc_normal on AVX-512 and on AVX2
    differ in the last bit), so an exact digest of the weights fails on another CPU, while any
    change to an initialiser's distribution, scale or draw order moves these by far more."""
    flat = tensor.detach().double().flatten()
    stats = [flat.mean(), flat.std(correction=0), flat.min(), flat.max()] if flat.numel() else []
    return torch.cat([torch.stack(stats) if stats else flat[:0], flat[:8]]).float()


def episode_values(head, batch) -> dict:
    """Initial weights' fingerprints, then every evaluation ACT step's outputs and loss."""
    values = {f"init/{key}": init_fingerprint(value) for key, value in head.state_dict().items()}
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
    # 30 layer applications amplify kernel rounding: AVX-512, AVX2 and scalar kernels give logits
    # up to 1e-3 apart (measured with ATEN_CPU_CAPABILITY), a changed recursion moves them far more.
    golden.check("model-etrm-official-recursion-canvas30", episode_values(head, canvas30_batch),
                 tolerances={"float32": (1e-3, 3e-3), "float64": (1e-5, 1e-5)})


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

"""Golden regression values: any change to the numerics of a model class, encoder type,
data build or evaluator fails here with a readable diff until it is recorded on purpose
with `pytest --update-golden` (and so shows up in review); the official recursion and canvas
are in one record.

Each model record has two parts, so that it holds on every CPU at the tolerance of one
operation (etrm.testing.golden.TOLERANCES) and still catches a bug of real size:
- `init/*`: fingerprints of the seeded initial weights, in float32. Initialisers round by
  CPU instruction set (half the elements of trunc_normal differ in the last bit between
  AVX2 and scalar kernels), which float32's tolerance absorbs.
- `step*/*`: a float64 run of the model on *portable* weights, drawn like the initial ones
  (same mean and spread per tensor) by numpy's generator, which gives the same numbers on
  every CPU. float32 runs of the same model differ by up to 3e-5 (norm-wise) across kernel
  sets after the canvas-30 recursion, as much as a missing RMSNorm epsilon moves them; in
  float64 that rounding is below 1e-10, so the record compares at float64's 1e-7.
"""

from __future__ import annotations

import zlib

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


def portable_weights_(head: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace every floating tensor of the state with CPU-independent draws of its initial
    mean and spread (both rounded to 3 digits, so a last-bit difference of the initialiser
    never shows). Constant tensors (the zero Q-head weight, its -5 bias) get a spread of 0.02,
    so the Q logits depend on the state they read."""
    with torch.no_grad():
        for key, tensor in head.state_dict().items():
            if not tensor.is_floating_point():
                continue
            flat = tensor.double().flatten()
            mean = float(f"{float(flat.mean()):.3g}")
            spread = float(f"{float(flat.std(correction=0)):.3g}") if flat.numel() > 1 else 0.0
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            draw = mean + (spread or 0.02) * rng.standard_normal(tuple(tensor.shape))
            tensor.copy_(torch.from_numpy(draw))
    return head


def episode_values(head, batch, tamper=None) -> dict:
    """Initial weights' fingerprints, then every evaluation ACT step's outputs and loss of the
    model with portable weights (then `tamper(head)`, for the controls), in its forward dtype."""
    values = {f"init/{key}": init_fingerprint(value) for key, value in head.state_dict().items()}
    portable_weights_(head)
    if tamper is not None:
        tamper(head)
    with torch.no_grad():
        carry = head.initial_carry(batch)
        for step in range(1, head.config.halt_max_steps + 1):
            carry, loss, metrics, out, _ = head(carry, batch)
            values |= {
                f"step{step}/logits": out["logits"],
                f"step{step}/q_halt_logits": out["q_halt_logits"],
                f"step{step}/q_continue_logits": out["q_continue_logits"],
                f"step{step}/loss": loss,
            }
            if "context" in out:
                values[f"step{step}/context"] = out["context"]
    return values


def build_record_model(name: str, **overrides) -> torch.nn.Module:
    """The model of record `name` (a MODELS key, or "canvas30"), seeded, in float64."""
    torch.manual_seed(0)
    if name == "canvas30":  # H_cycles 3, L_cycles 4 as the official ARC-AGI-1 run
        settings = dict(model_type="etrm", seq_len=900, H_cycles=3, L_cycles=4, halt_max_steps=2, max_demos=1)
    else:
        settings = dict(MODELS[name])
    return build_model(tiny_config(settings.pop("model_type"), forward_dtype="float64", **settings | overrides)).eval()


@pytest.mark.parametrize("name", MODELS)
def test_model_numerics_match_golden(name, batch, golden):
    golden.check(f"model-{name}", episode_values(build_record_model(name), batch))


def test_official_recursion_at_canvas_30_matches_golden(canvas30_batch, golden):
    # On real 30x30 queries; two ACT steps, so the second starts from a carried state.
    golden.check(
        "model-etrm-official-recursion-canvas30", episode_values(build_record_model("canvas30"), canvas30_batch)
    )


def _without_rmsnorm_epsilon(head):
    for module in head.modules():
        if isinstance(getattr(module, "eps", None), float):
            module.eps = 0.0


def _one_weight_off(head, by: float = 1e-3):
    weight = head.state_dict()["model.inner.L_level.layers.0.self_attn.qkv_proj.weight"]
    with torch.no_grad():
        weight.view(-1)[weight.numel() // 2] += by


@pytest.mark.parametrize("name", ["trm", "etrm-standard", "canvas30"])
@pytest.mark.parametrize("bug", [_without_rmsnorm_epsilon, _one_weight_off], ids=["no-rmsnorm-eps", "weight+1e-3"])
def test_control_a_bug_of_real_size_fails_the_record(name, bug, batch, canvas30_batch):
    """Negative control: the tolerance that passes every CPU's kernels must not pass a small
    real change (a missing epsilon moves float32 logits by 4e-6 to 1.5e-4 norm-wise, no more
    than kernel rounding does in float32)."""
    from etrm.testing.golden import compare_to_golden

    record = "model-etrm-official-recursion-canvas30" if name == "canvas30" else f"model-{name}"
    values = episode_values(build_record_model(name), canvas30_batch if name == "canvas30" else batch, tamper=bug)
    diff = compare_to_golden(record, values, update=False)
    moved = {d.key for d in diff.diffs}
    assert any(k.endswith("/logits") for k in moved), f"{bug.__name__} on {name} passed the golden record"
    assert not any(k.startswith("init/") for k in moved)  # the bug is in the run, not the initialiser


def test_data_build_matches_golden(tmp_path, golden):
    from etrm.data.build import build_dataset

    out = build_dataset(
        tmp_path / "build",
        mode="fewshot",
        num_aug=2,
        seed=0,
        canvas=10,
        progress=False,
        task_ids=["017c7c7b", "0520fde7", "00576224"],
    )
    import hashlib

    files = sorted(p for p in out.rglob("*") if p.is_file())
    golden.check(
        "data-build-fewshot",
        {str(p.relative_to(out)): digest_array(hashlib.sha256(p.read_bytes()).hexdigest()) for p in files},
    )


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
    golden.check(
        "evaluator-fixture-mixed",
        {k: float(v) for k, v in result.metrics.items()}
        | {f"task/{t}": float(s[1]) for t, s in sorted(result.per_task.items())},
    )

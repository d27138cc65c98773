"""The official numerics on CPU: bfloat16 forward, the official recursion (H_cycles 3 with
L_cycles 4, the TRM's, or 6, the origin ETRM's), canvas 30, ignored labels, padded demo slots
and a valid demo pair that is entirely PAD. Each is a place where a fault hides from float32
tests on small canvases (the stablemax NaN gradient did).

bfloat16 GEMMs run ~20x slower than float32 ones on a CPU without bfloat16 units, so each test
takes the smallest width, batch and step count that still reaches its path."""

from __future__ import annotations

import pytest
import torch

from etrm.checks import h2_gradient_flow as h2
from etrm.config import tiny_config
from etrm.data.datasets import fewshot_batch
from etrm.data.grids import PAD_ID
from etrm.models import build_model
from etrm.models.loss import IGNORE_LABEL_ID, stablemax_cross_entropy
from etrm.suite.support import TINY_ENCODER_MODELS, tiny_model
from etrm.testing.artifacts import BUNDLED, fixtures_root

# Every model class and encoder type; the TRM's identifiers cover the interop build's 181.
MODELS = ["trm", *TINY_ENCODER_MODELS]
# Canvas 30 is what this is about: the recursion depth is exercised on the 10x10 canvas below.
CANVAS30 = dict(seq_len=900, max_demos=1, hidden_size=16, num_heads=1, H_cycles=1, L_cycles=1, forward_dtype="bfloat16")
# bfloat16 keeps 8 bits of mantissa (relative step 2^-8). Through the official recursion's 15
# post-norm blocks per ACT step its logits (RMS ~1) differ from float32's by 0.01-0.03 on average
# and the LM loss by up to 2e-3 relative (three seeds measured); single logits reach 0.8, so only
# the mean is bounded. A fault moves the mean O(1).
BF16_LOSS_RTOL, BF16_LOGITS_MEAN_ERROR = 1e-2, 0.06


def build(name: str, **overrides):
    if name == "trm":
        torch.manual_seed(0)
        return build_model(tiny_config("trm", num_puzzle_identifiers=181, **overrides))
    return tiny_model(name, **overrides)


@pytest.fixture(scope="module")
def edge_batch():
    """Two bundled 10x10 few-shot queries (labels partly ignored, 2 of 4 demo slots padded) whose
    second sample's second demo pair, still marked valid, is blanked to PAD."""
    batch = fewshot_batch(fixtures_root() / BUNDLED["data_dir"], tiny_config("etrm"), batch_size=2)
    batch["demo_inputs"][1, 1] = PAD_ID
    batch["demo_labels"][1, 1] = PAD_ID
    assert batch["demo_mask"][1, 1] and not batch["demo_mask"].all() and (batch["labels"] == IGNORE_LABEL_ID).any()
    return batch


@pytest.mark.parametrize("name", MODELS)
def test_bfloat16_training_step_on_a_canvas_30_batch_leaves_every_gradient_finite(name, canvas30_batch):
    # Any non-finite gradient, whatever its source. (Stablemax's NaN at a logit of exactly 1.0 is
    # pinned by the unit tests in test_models.py; here such logits occur by chance, in 6 of 7 models.)
    head = build(name, **CANVAS30).train()
    _, loss, *_ = head(head.initial_carry(canvas30_batch), canvas30_batch)
    (loss / len(canvas30_batch["inputs"])).backward()
    leaves = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    puzzle_emb = getattr(head.model.inner, "puzzle_emb", None)
    if puzzle_emb is not None:  # TRM: the sparse embedding's rows of this batch, trained by sign-SGD
        leaves.append(("puzzle_emb.local_weights", puzzle_emb.local_weights))
    missing = [n for n, p in leaves if p.grad is None]
    nonfinite = [n for n, p in leaves if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    assert not nonfinite and not missing, (
        f"{name}: {len(nonfinite)} of {len(leaves)} gradients non-finite "
        f"({', '.join(nonfinite[:4])}), {len(missing)} missing ({', '.join(missing[:4])})"
    )


@pytest.mark.parametrize("name, L_cycles", [("etrm-standard", 4), ("etrmtrm-standard", 6)])
def test_bfloat16_encoder_gradient_flows_at_the_official_recursion(name, L_cycles, edge_batch):
    head = tiny_model(name, H_cycles=3, L_cycles=L_cycles, forward_dtype="bfloat16")
    result = h2.check_encoder_gradient_every_step(head, edge_batch, steps=2)
    assert result.passed, result.message


def test_bfloat16_recursion_and_loss_follow_float32_at_the_official_recursion(edge_batch):
    # An ETRM, so that the blank and padded demo slots reach the loss through the context.
    cfg = tiny_config("etrm", H_cycles=3, L_cycles=4, halt_max_steps=2, forward_dtype="bfloat16")
    torch.manual_seed(0)
    bf16 = build_model(cfg).eval()
    fp32 = build_model(cfg.replace(forward_dtype="float32")).eval()
    fp32.load_state_dict(bf16.state_dict())  # H_init/L_init upcast from their bfloat16 storage
    labels = edge_batch["labels"]
    labelled = (labels != IGNORE_LABEL_ID).sum(-1)
    carries = [m.initial_carry(edge_batch) for m in (bf16, fp32)]
    with torch.no_grad():
        for step in range(1, cfg.halt_max_steps + 1):
            (carry16, _, m16, out16, _), (carry32, _, m32, out32, _) = [
                m(c, edge_batch) for m, c in zip((bf16, fp32), carries)
            ]
            carries = [carry16, carry32]
            # The LM loss is each sample's mean over its labelled tokens of its own logits' loss.
            own = (stablemax_cross_entropy(out16["logits"], labels).sum(-1) / labelled).sum()
            torch.testing.assert_close(m16["lm_loss"], own, rtol=1e-12, atol=0)
            error = (out16["logits"].float() - out32["logits"]).abs().mean().item()
            assert error <= BF16_LOGITS_MEAN_ERROR, (
                f"step {step}: bfloat16 logits are {error:.3g} from float32's on average"
            )
            torch.testing.assert_close(
                m16["lm_loss"],
                m32["lm_loss"].to(m16["lm_loss"]),
                rtol=BF16_LOSS_RTOL,
                atol=0,
                msg=lambda m, step=step: f"step {step} LM loss, bfloat16 vs float32: {m}",
            )

"""Unit tests of the TRM decoder, ACT wrapper, encoders, ETRM/ETRMTRM and loss head."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from etrm.config import ConfigError, official_arc1_config, tiny_config
from etrm.models import ETRM, ETRMTRM, TRM, build_encoder, build_model
from etrm.models.encoders import PAD_ID
from etrm.models.loss import IGNORE_LABEL_ID, stablemax_cross_entropy
from etrm.suite.support import CompiledLayout
from etrm.synthetic import random_batch

MODEL_TYPES = ["trm", "etrm", "etrmtrm"]
ENCODER_VARIANTS = [
    dict(encoder_type="standard"),
    dict(encoder_type="standard", encoder_pooling_method="attention"),
    dict(encoder_type="standard", encoder_pooling_method="weighted"),
    dict(encoder_type="standard", encoder_norm_style="pre"),
    dict(encoder_type="variational", kl_weight=0.1),
]


def make(model_type: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(model_type, **overrides))


def force_halting(head, halt: bool) -> None:
    """Bias Q so every sample wants to halt (or to continue) whatever its state."""
    with torch.no_grad():
        head.model.inner.q_head.bias.fill_(10.0 if halt else -10.0)


# --- shapes, dtypes, init -------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_output_shapes_and_dtypes(model_type, dtype):
    head = make(model_type, forward_dtype=dtype)
    cfg = head.config
    batch = random_batch(cfg, 3, demo_counts=[4, 1, 0] if cfg.uses_encoder else None)
    carry, loss, metrics, out, _ = head(head.initial_carry(batch), batch)
    assert out["logits"].shape == (3, cfg.seq_len, cfg.vocab_size)
    assert out["logits"].dtype == getattr(torch, dtype)
    assert out["q_halt_logits"].shape == (3,) and out["q_halt_logits"].dtype == torch.float32
    assert carry.inner.z_H.shape == (3, cfg.full_seq_len, cfg.hidden_size)
    assert not carry.inner.z_H.requires_grad and not carry.inner.z_L.requires_grad  # carry is detached
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    if cfg.uses_encoder:
        assert out["context"].shape == (3, cfg.puzzle_emb_len, cfg.hidden_size)
        assert out["context"].dtype == getattr(torch, dtype)


def test_q_head_starts_at_weight_zero_bias_minus_five():
    q_head = make("trm").model.inner.q_head
    assert torch.equal(q_head.weight, torch.zeros_like(q_head.weight))
    assert torch.equal(q_head.bias, torch.full((2,), -5.0))


def test_init_statistics():
    cfg = tiny_config("trm", hidden_size=64, num_heads=4)
    torch.manual_seed(0)
    inner = build_model(cfg).model.inner
    assert inner.embed_tokens.embedding_weight.std().item() == pytest.approx(1 / math.sqrt(64), rel=0.15)
    qkv = inner.L_level.layers[0].self_attn.qkv_proj.weight
    assert qkv.std().item() == pytest.approx(1 / math.sqrt(64), rel=0.05)  # LeCun, truncation-corrected
    assert qkv.abs().max().item() <= 2 / math.sqrt(64) * 1.2
    assert torch.count_nonzero(inner.puzzle_emb.weights) == 0  # zero-initialised


@pytest.mark.parametrize("H_cycles, L_cycles", [(2, 2), (3, 4), (3, 6)])  # tiny; official TRM; origin ETRM
def test_recursion_runs_h_minus_one_cycles_without_grad_then_one_with(H_cycles, L_cycles):
    head = make("trm", H_cycles=H_cycles, L_cycles=L_cycles)
    cfg = head.config
    grad_modes = []
    head.model.inner.L_level.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    batch = random_batch(cfg, 2)
    head(head.initial_carry(batch), batch)
    per_cycle = cfg.L_cycles + 1
    assert grad_modes == [False] * (cfg.H_cycles - 1) * per_cycle + [True] * per_cycle


def test_trm_prefix_is_the_puzzle_vector_zero_padded():
    head = make("trm")
    inner = head.model.inner
    with torch.no_grad():
        inner.puzzle_emb.weights.normal_()
    prefix = inner.puzzle_prefix(torch.tensor([3, 5]))
    cfg = head.config
    assert prefix.shape == (2, cfg.puzzle_emb_len, cfg.hidden_size)
    assert torch.equal(prefix.reshape(2, -1)[:, : cfg.puzzle_emb_ndim], inner.puzzle_emb.weights[[3, 5]])
    assert torch.count_nonzero(prefix.reshape(2, -1)[:, cfg.puzzle_emb_ndim :]) == 0


# --- ACT carry and halting ------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_halted_slots_take_new_data_and_continuing_slots_keep_theirs(model_type):
    head = make(model_type).eval()
    cfg = head.config
    first, second = random_batch(cfg, 2, seed=1), random_batch(cfg, 2, seed=2)
    carry, *_ = head(head.initial_carry(first), first)
    carry.halted = torch.tensor([True, False])
    carry, loss, metrics, out, _ = head(carry, second)
    for key, value in carry.current_data.items():
        assert torch.equal(value[0], second[key][0]), f"halted slot did not load the new {key}"
        assert torch.equal(value[1], first[key][1]), f"continuing slot lost its own {key}"
    assert carry.steps.tolist() == [1, 2]
    # The loss sees the labels of the sample now in each slot.
    expected = stablemax_cross_entropy(out["logits"], torch.stack([second["labels"][0], first["labels"][1]]))
    assert metrics["lm_loss"].item() == pytest.approx((expected.sum(-1) / cfg.seq_len).sum().item(), rel=1e-6)
    # The restarted slot computes exactly what a fresh carry computes.
    fresh = make(model_type).eval()
    _, _, _, fresh_out, _ = fresh(fresh.initial_carry(second), second)
    torch.testing.assert_close(out["logits"][0], fresh_out["logits"][0])


@pytest.mark.parametrize("model_type", ["trm", "etrm"])
def test_evaluation_runs_exactly_halt_max_steps(model_type):
    head = make(model_type).eval()
    force_halting(head, True)  # even a model that wants to halt runs every step in eval
    batch = random_batch(head.config, 2)
    carry = head.initial_carry(batch)
    halted_at = []
    for step in range(1, head.config.halt_max_steps + 1):
        carry, *_ = head(carry, batch)
        halted_at.append(bool(carry.halted.all()))
        assert bool(carry.halted.any()) == (step == head.config.halt_max_steps)
    assert halted_at[-1]


def test_training_halts_when_q_says_so_without_exploration():
    head = make("trm", halt_exploration_prob=0.0).train()
    force_halting(head, True)
    batch = random_batch(head.config, 4)
    carry, *_ = head(head.initial_carry(batch), batch)
    assert carry.halted.all() and carry.steps.tolist() == [1] * 4
    force_halting(head, False)
    carry = head.initial_carry(batch)
    for step in range(head.config.halt_max_steps):
        carry, *_ = head(carry, batch)
        assert bool(carry.halted.all()) == (step == head.config.halt_max_steps - 1)


def test_exploration_vetoes_halting_with_a_fresh_minimum_each_step():
    head = make("trm", halt_exploration_prob=1.0, halt_max_steps=4, seq_len=16).train()
    force_halting(head, True)
    batch = random_batch(head.config, 64)
    carry = head.initial_carry(batch)
    torch.manual_seed(0)
    carry, *_ = head(carry, batch)
    assert not carry.halted.any(), "minimum steps are drawn from 2..max, so nobody halts at step 1"
    carry, *_ = head(carry, batch)
    at_two = carry.halted.float().mean().item()
    assert 0.15 < at_two < 0.55, at_two  # P(draw == 2) = 1/3
    carry.halted[:] = False  # keep every sample in flight: step 3 draws afresh
    carry, *_ = head(carry, batch)
    assert 0.4 < carry.halted.float().mean().item() < 0.95  # P(draw <= 3) = 2/3


# --- loss -------------------------------------------------------------------------------


def test_stablemax_against_hand_computed_values():
    logits = torch.tensor([[[0.0, 1.0, -1.0], [2.0, -3.0, 0.5]]])
    labels = torch.tensor([[1, IGNORE_LABEL_ID]])
    loss = stablemax_cross_entropy(logits, labels)
    # s(0)=1, s(1)=2, s(-1)=1/2 -> p(label 1) = 2 / 3.5
    assert loss.dtype == torch.float64
    assert loss[0, 0].item() == pytest.approx(-math.log(2 / 3.5), abs=1e-12)
    assert loss[0, 1].item() == 0.0
    big = stablemax_cross_entropy(torch.tensor([[[1e4, -1e4]]]), torch.tensor([[1]]))
    assert torch.isfinite(big).all()


def test_stablemax_gradient_is_finite_at_a_logit_of_exactly_one():
    # `where` differentiates both branches: 1/(1-x) at x = 1 gave a NaN gradient (the
    # official s(x) adds 1e-30). Expected values: d/dx of -log(s_1 / sum s), s = (2, 1.5, 1/3).
    logits = torch.tensor([[[1.0, 0.5, -2.0]]], dtype=torch.float64, requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([[1]])).sum().backward()
    torch.testing.assert_close(
        logits.grad, torch.tensor([[[0.2609, -0.4058, 0.0290]]], dtype=torch.float64), rtol=0, atol=1e-4
    )


def test_stablemax_gradient_of_an_ignored_bfloat16_token_at_one_is_zero():
    # In bfloat16 a logit of exactly 1.0 is common, and ignored (PAD) tokens are most of a canvas.
    logits = torch.tensor([[[1.0, -0.5, 2.0], [1.0, 1.0, 0.0]]], dtype=torch.bfloat16, requires_grad=True)
    stablemax_cross_entropy(logits, torch.tensor([[2, IGNORE_LABEL_ID]])).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[0, 1], torch.zeros(3, dtype=torch.bfloat16))


def test_metrics_count_only_halted_labelled_samples_and_padding_rows_count_as_correct():
    head = make("trm").eval()
    cfg = head.config
    batch = random_batch(cfg, 3)
    batch["labels"][2] = IGNORE_LABEL_ID  # a padding row
    carry = head.initial_carry(batch)
    carry, loss, metrics, out, _ = head(carry, batch)
    assert metrics["count"].item() == 0  # nobody halted at step 1 in eval
    for _ in range(cfg.halt_max_steps - 1):
        carry, loss, metrics, out, _ = head(carry, batch)
    assert metrics["count"].item() == 2 and metrics["steps"].item() == 2 * cfg.halt_max_steps
    # BCE target of the padding row is "correct": with q_halt = -5 its loss is softplus(5).
    q = out["q_halt_logits"]
    expected = torch.nn.functional.binary_cross_entropy_with_logits(q, torch.tensor([0.0, 0.0, 1.0]), reduction="sum")
    assert metrics["q_halt_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_term_is_summed_over_samples_and_weighted():
    head = make("etrm", encoder_type="variational", kl_weight=0.25).train()
    batch = random_batch(head.config, 2)
    torch.manual_seed(1)
    _, loss, metrics, out, _ = head(head.initial_carry(batch), batch)
    assert out["kl"].shape == (2,) and (out["kl"] > 0).all()
    assert metrics["kl_loss"].item() == pytest.approx(out["kl"].sum().item())
    expected = metrics["lm_loss"] + 0.5 * metrics["q_halt_loss"] + 0.25 * metrics["kl_loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)


# --- gradients, determinism, persistence --------------------------------------------------


@pytest.mark.parametrize(
    "model_type, variant",
    [("trm", {})] + [(m, v) for m in ("etrm", "etrmtrm") for v in (ENCODER_VARIANTS[0], ENCODER_VARIANTS[4])],
)
def test_gradient_reaches_every_trainable_parameter_on_every_step(model_type, variant):
    head = make(model_type, halt_exploration_prob=0.0, **variant).train()
    force_halting(head, False)  # step 2 has no resets: the hardest case for ETRMTRM
    batch = random_batch(head.config, 2, demo_counts=[4, 2] if head.config.uses_encoder else None)
    carry = head.initial_carry(batch)
    for step in (1, 2):
        head.zero_grad(set_to_none=True)
        carry, loss, *_ = head(carry, batch)
        loss.backward()
        assert not carry.halted.any() or step == head.config.halt_max_steps
        starved = [
            n for n, p in head.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
        ]
        assert not starved, f"step {step}: no gradient for {starved}"


def test_frozen_encoder_gets_no_gradient_and_decoder_still_does():
    head = make("etrm").train()
    head.model.freeze_encoder()
    batch = random_batch(head.config, 2)
    _, loss, *_ = head(head.initial_carry(batch), batch)
    loss.backward()
    assert all(p.grad is None for p in head.model.encoder.parameters())
    assert all(p.grad is not None for p in head.model.inner.parameters())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_same_seed_same_model_and_outputs(model_type, tmp_path):
    a, b = make(model_type, seed=7), make(model_type, seed=7)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    batch = random_batch(a.config, 2)
    out_a = a.eval()(a.initial_carry(batch), batch)[3]
    # save/load round trip into a differently seeded model gives the same outputs
    torch.save(a.state_dict(), tmp_path / "m.pt")
    c = make(model_type, seed=8)
    c.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    out_c = c.eval()(c.initial_carry(batch), batch)[3]
    torch.testing.assert_close(out_a["logits"], out_c["logits"], rtol=0, atol=0)


# --- encoder invariances ------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoders():
    torch.manual_seed(0)
    return {i: build_encoder(tiny_config("etrm", **variant)).eval() for i, variant in enumerate(ENCODER_VARIANTS)}


@given(variant=st.integers(0, len(ENCODER_VARIANTS) - 1), valid=st.integers(1, 4), perm_seed=st.integers(0, 1000))
def test_context_ignores_demo_order(encoders, variant, valid, perm_seed):
    enc = encoders[variant]
    batch = random_batch(enc.config, 1, seed=perm_seed, demo_counts=[valid])
    perm = torch.randperm(enc.config.max_demos, generator=torch.Generator().manual_seed(perm_seed))
    with torch.no_grad():
        base = enc(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
        shuffled = enc(
            batch["demo_inputs"][:, perm], batch["demo_labels"][:, perm], batch["demo_mask"][:, perm]
        ).context
    torch.testing.assert_close(base, shuffled, rtol=1e-5, atol=1e-5)


@given(variant=st.integers(0, len(ENCODER_VARIANTS) - 1), valid=st.integers(0, 3), junk_seed=st.integers(0, 1000))
def test_context_ignores_padded_demo_slots(encoders, variant, valid, junk_seed):
    enc = encoders[variant]
    batch = random_batch(enc.config, 1, seed=3, demo_counts=[valid])
    junk = random_batch(enc.config, 1, seed=junk_seed)
    pad = ~batch["demo_mask"]
    demo_inputs = torch.where(pad[..., None], junk["demo_inputs"], batch["demo_inputs"])
    demo_labels = torch.where(pad[..., None], junk["demo_labels"], batch["demo_labels"])
    with torch.no_grad():
        base = enc(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
        other = enc(demo_inputs, demo_labels, batch["demo_mask"]).context
    assert torch.isfinite(base).all(), "a sample without valid demos must still get a finite context"
    assert torch.equal(base, other)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("pooling", ["mean", "attention", "weighted"])
def test_a_valid_demo_pair_of_padding_only_gives_a_finite_context_and_gradients(pooling, dtype):
    """Batches built by other code (a user's collate, a demo mask off by one) can mark a pair
    of PAD tokens only as valid: beside a real pair (sample 0) and as a sample's only pair
    (sample 1). The context, the loss and every gradient must stay finite."""
    head = make("etrm", encoder_pooling_method=pooling, forward_dtype=dtype, halt_exploration_prob=0.0).train()
    batch = random_batch(head.config, 2, seed=1, demo_counts=[2, 1])
    for sample, slot in ((0, 1), (1, 0)):
        batch["demo_inputs"][sample, slot] = PAD_ID
        batch["demo_labels"][sample, slot] = PAD_ID
    assert batch["demo_mask"][0, 1] and batch["demo_mask"][1, 0]
    context = head.model.encoder(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
    assert context.dtype == getattr(torch, dtype) and torch.isfinite(context.float()).all(), context
    _, loss, *_ = head(head.initial_carry(batch), batch)
    loss.backward()
    assert torch.isfinite(loss)
    bad = [n for n, p in head.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    encoder_grads = [p.grad for p in head.model.encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(g.abs().sum() > 0 for g in encoder_grads)


def test_context_tokens_have_unit_rms(encoders):
    enc = encoders[0]
    batch = random_batch(enc.config, 2, demo_counts=[3, 0])
    with torch.no_grad():
        ctx = enc(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
    torch.testing.assert_close(
        ctx.square().mean(-1).sqrt(), torch.ones(2, enc.config.puzzle_emb_len), rtol=1e-3, atol=1e-3
    )


def test_variational_encoder_samples_in_training_and_uses_the_mean_in_eval(encoders):
    enc = encoders[4]
    batch = random_batch(enc.config, 1)
    args = (batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
    with torch.no_grad():
        assert torch.equal(enc(*args).context, enc(*args).context)
        enc.train()
        assert not torch.equal(enc(*args).context, enc(*args).context)
        enc.eval()


def test_unknown_encoder_type_lists_valid_names():
    with pytest.raises(ConfigError, match="valid: standard, variational"):
        tiny_config("etrm", encoder_type="transformer")


def test_etrmtrm_refines_its_context_across_steps_and_resets_on_halt():
    head = make("etrmtrm").eval()
    batch = random_batch(head.config, 2)
    carry, *_, out1, _ = head(head.initial_carry(batch), batch)
    carry, *_, out2, _ = head(carry, batch)
    assert torch.equal(carry.context, out2["context"])
    assert not torch.allclose(out1["context"], out2["context"]), "the carried context must change the query"
    carry.halted = torch.tensor([True, False])
    carry, *_, out3, _ = head(carry, batch)
    torch.testing.assert_close(out3["context"][0], out1["context"][0])  # reset: back to the learned query


def test_model_classes_check_their_model_type():
    with pytest.raises(ValueError, match="model_type 'etrm'"):
        ETRM(tiny_config("trm"))
    with pytest.raises(ValueError, match="model_type 'trm'"):
        TRM(tiny_config("etrmtrm"))
    assert isinstance(make("etrmtrm").model, ETRMTRM)


def test_missing_batch_keys_are_named():
    head = make("etrm")
    batch = random_batch(tiny_config("trm"), 2)
    with pytest.raises(KeyError, match="demo_inputs"):
        head.initial_carry(batch)


# --- official checkpoint layout -------------------------------------------------------------

OFFICIAL_KEYS = {
    "H_init": ((512,), "buffer"),
    "L_init": ((512,), "buffer"),
    "embed_tokens.embedding_weight": ((12, 512), "param"),
    "lm_head.weight": ((12, 512), "param"),
    "q_head.weight": ((2, 512), "param"),
    "q_head.bias": ((2,), "param"),
    "puzzle_emb.weights": ((876_406, 512), "buffer"),
    **{
        f"L_level.layers.{i}.{name}": (shape, "param")
        for i in (0, 1)
        for name, shape in [
            ("self_attn.qkv_proj.weight", (1536, 512)),
            ("self_attn.o_proj.weight", (512, 512)),
            ("mlp.gate_up_proj.weight", (3072, 512)),
            ("mlp.down_proj.weight", (512, 1536)),
        ]
    },
}


@pytest.fixture(scope="module")
def official_head():
    with torch.device("meta"):  # nothing large is allocated
        return build_model(official_arc1_config())


def test_official_arc_agi_1_key_layout(official_head):
    compiled = CompiledLayout(official_head)  # torch.compile's key layout (tests/test_checkpoints.py)
    state = compiled.state_dict()
    prefix = "_orig_mod.model.inner."
    assert set(state) == {prefix + k for k in OFFICIAL_KEYS}
    params = {n for n, _ in compiled.named_parameters()}
    for key, (shape, kind) in OFFICIAL_KEYS.items():
        assert tuple(state[prefix + key].shape) == shape, key
        assert ((prefix + key) in params) == (kind == "param"), key
    assert state[prefix + "H_init"].dtype == torch.bfloat16


def test_official_layout_state_dict_loads_strictly_with_and_without_compile_prefix(official_head):
    official = {
        f"_orig_mod.model.inner.{k}": torch.empty(shape, device="meta") for k, (shape, _) in OFFICIAL_KEYS.items()
    }
    CompiledLayout(official_head).load_state_dict(official, strict=True)
    plain = {k.removeprefix("_orig_mod."): v for k, v in official.items()}
    official_head.load_state_dict(plain, strict=True)

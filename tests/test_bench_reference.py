"""Our recursion computes what the optimised official-style re-implementation
(tests/reference/official_style.py) computes, so the side-by-side
timings in tests/test_bench_recursion.py compare equal work (and the hot-path rewrites in
etrm/layers.py keep the official numerics)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from reference import official_style as ref

from etrm.bfloat16 import aten_bfloat16_attention_runs, bfloat16_products_emulated
from etrm.config import tiny_config
from etrm.layers import (
    ONEDNN_MIN_MACS,
    CastedLinear,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
    onednn_linear_available,
    rms_norm,
    use_onednn_linear,
)
from etrm.models import InnerCarry, build_model
from etrm.synthetic import random_batch

# The rewrites reorder a few float32 roundings (one fused norm reduction, RoPE by roll and
# multiply-add); through a recursion of 12 post-norm blocks that grows to ~1e-5 on O(1)
# logits, as does merely changing the thread count. A real fault differs by O(1). At the
# official recursion (H_cycles 3, L_cycles 4: 30 blocks) a few states of 10k reach 2e-4.
FLOAT32 = dict(rtol=1e-4, atol=1e-4)
DEEP_FLOAT32 = dict(rtol=1e-3, atol=1e-3)


def pair(dtype: str, **overrides):
    """Our TRM decoder and the reference with the same weights (a non-zero puzzle embedding)."""
    torch.manual_seed(0)
    ours = build_model(tiny_config("trm", L_layers=2, forward_dtype=dtype, **overrides)).model.inner
    with torch.no_grad():
        ours.puzzle_emb.weights.normal_()
    theirs = ref.OfficialStyleDecoder(ours.config)
    theirs.load_state_dict(ours.state_dict())  # strict: same names, same shapes
    return ours, theirs


def inputs(decoder, batch_size: int = 3):
    cfg = decoder.config
    gen = torch.Generator().manual_seed(1)
    shape = (batch_size, cfg.full_seq_len, cfg.hidden_size)
    carry = InnerCarry(
        z_H=torch.randn(shape, generator=gen).to(decoder.forward_dtype),
        z_L=torch.randn(shape, generator=gen).to(decoder.forward_dtype),
    )
    batch = {
        "inputs": torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len), generator=gen, dtype=torch.int32),
        "puzzle_identifiers": torch.randint(
            0, cfg.num_puzzle_identifiers, (batch_size,), generator=gen, dtype=torch.int32
        ),
    }
    return carry, batch


def test_reference_has_our_state_dict_layout():
    ours, theirs = pair("float32")
    assert list(theirs.state_dict()) == list(ours.state_dict())
    assert all(theirs.state_dict()[k].shape == v.shape for k, v in ours.state_dict().items())


@pytest.mark.parametrize(
    "grad, cycles, tol",
    [
        (False, dict(), FLOAT32),
        (True, dict(), FLOAT32),  # the tiny default
        (False, dict(H_cycles=3, L_cycles=4), DEEP_FLOAT32),  # the official TRM's
    ],
    ids=["no_grad", "grad", "H3L4"],
)
def test_recursion_step_equals_the_reference(grad, cycles, tol):
    ours, theirs = pair("float32", **cycles)
    carry, batch = inputs(ours)
    with torch.set_grad_enabled(grad):
        new, logits, q_halt, q_cont = ours(carry, batch["inputs"], ours.puzzle_prefix(batch["puzzle_identifiers"]))
        ref_new, ref_logits, (ref_halt, ref_cont) = theirs(carry, batch)
    torch.testing.assert_close(logits, ref_logits, **tol)
    torch.testing.assert_close(new.z_H, ref_new.z_H, **tol)
    torch.testing.assert_close(new.z_L, ref_new.z_L, **tol)
    torch.testing.assert_close(q_halt, ref_halt, **tol)
    torch.testing.assert_close(q_cont, ref_cont, **tol)
    assert logits.requires_grad == grad


def test_bfloat16_recursion_is_as_close_to_float32_as_the_reference():
    """In bfloat16 one flipped last bit (2^-8) grows through the recursion, so the two
    implementations differ by more than rounding; what must hold is that ours is as
    accurate as the reference, measured against the same recursion in float32."""
    ours, theirs = pair("bfloat16")
    exact = pair("float32")[1]
    carry, batch = inputs(ours)
    with torch.no_grad():
        truth = exact(InnerCarry(z_H=carry.z_H.float(), z_L=carry.z_L.float()), batch)[1]
        ours_err = (
            ours(carry, batch["inputs"], ours.puzzle_prefix(batch["puzzle_identifiers"]))[1].float() - truth
        ).abs()
        with nullcontext() if aten_bfloat16_attention_runs() else bfloat16_products_emulated():
            ref_err = (theirs(carry, batch)[1].float() - truth).abs()  # its attention as ours where ATen's fails
    assert ours_err.mean() <= 1.25 * ref_err.mean() and ours_err.max() <= 2 * ref_err.max(), (
        f"bfloat16 error vs float32: ours mean {ours_err.mean():.4f} max {ours_err.max():.3f}, "
        f"reference mean {ref_err.mean():.4f} max {ref_err.max():.3f}"
    )


def test_gradients_of_the_last_cycle_equal_the_reference():
    ours, theirs = pair("float32")
    carry, batch = inputs(ours)
    target = torch.randn(3, ours.config.seq_len, ours.config.vocab_size, generator=torch.Generator().manual_seed(2))
    _, logits, q_halt, _ = ours(carry, batch["inputs"], ours.puzzle_prefix(batch["puzzle_identifiers"]))
    ((logits * target).sum() + q_halt.sum()).backward()
    _, ref_logits, (ref_halt, _) = theirs(carry, batch)
    ((ref_logits * target).sum() + ref_halt.sum()).backward()
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        expected = theirs_params[name].grad  # tolerance relative to the gradient's scale (sums over many terms)
        torch.testing.assert_close(
            p.grad, expected, rtol=0, atol=1e-4 * expected.abs().max().item(), msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_the_official_rotate_half_form(dtype):
    rope = RotaryEmbedding(head_dim=8, max_positions=12, base=10000.0)
    official = ref.RotaryEmbedding(8, 12, 10000.0)
    x = torch.randn(2, 10, 2, 3, 8).to(dtype)  # (B, S, q|k, heads, head_dim), S below the table size
    cos, sin = official()
    got = apply_rotary(x, *rope())
    assert got.dtype == dtype
    for i in range(2):
        expected = ref.apply_rotary_pos_emb(x[:, :, i], x[:, :, i], cos[:10], sin[:10])[0]
        torch.testing.assert_close(got[:, :, i], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_the_official_float32_form(dtype):
    x = (torch.randn(4, 7, 64) * 3).to(dtype)
    got = rms_norm(x, 1e-5)
    assert got.dtype == dtype
    torch.testing.assert_close(got, ref.rms_norm(x, 1e-5))  # float32 or one bfloat16 ulp
    zeros = torch.zeros(2, 64, dtype=dtype)  # eps keeps an all-zero row finite
    assert torch.equal(rms_norm(zeros, 1e-5), zeros)


def ops_run(fn) -> set[str]:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {event.key for event in prof.key_averages()}


ONEDNN = "mkldnn::_linear_pointwise"
needs_onednn = pytest.mark.skipif(
    not onednn_linear_available(), reason="oneDNN's linear kernel is not in this torch build"
)


@pytest.fixture
def onednn():
    previous = use_onednn_linear(True)
    yield
    use_onednn_linear(previous)


@needs_onednn
def test_onednn_linear_is_on_by_default_and_can_be_switched_off():
    layer, x = CastedLinear(64, 96), torch.randn(4, 256, 64)  # large enough to qualify
    with torch.no_grad():
        assert ONEDNN in ops_run(lambda: layer(x))
        previous = use_onednn_linear(False)
        try:
            assert ONEDNN not in ops_run(lambda: layer(x))
        finally:
            use_onednn_linear(previous)


@needs_onednn
def test_onednn_linear_takes_large_gradient_free_float32_products_only(onednn):
    torch.manual_seed(0)
    layer = CastedLinear(64, 96, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(4, 256, 64)  # 1024 x 64 x 96 multiply-adds: above ONEDNN_MIN_MACS
    assert x.numel() * 96 >= ONEDNN_MIN_MACS > x[:1, :16].numel() * 96
    with torch.no_grad():
        assert ONEDNN in ops_run(lambda: layer(x))
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), **FLOAT32)
        strided = x[:, ::2].expand(2, -1, -1, -1)
        torch.testing.assert_close(layer(strided), F.linear(strided, layer.weight, layer.bias), **FLOAT32)
        assert ONEDNN not in ops_run(lambda: layer(x[:1, :16]))  # small: its per-call overhead would cost
        assert ONEDNN not in ops_run(lambda: layer(x.bfloat16()))  # bfloat16: F.linear already uses oneDNN
    # With autograd the kernel has no backward formula, so F.linear must run instead.
    assert ONEDNN not in ops_run(lambda: layer(x))
    layer(x).sum().backward()
    assert layer.weight.grad is not None


@needs_onednn
def test_onednn_swiglu_fuses_silu_and_product_into_the_gemms(onednn):
    torch.manual_seed(0)
    mlp, x = SwiGLU(64, 4.0), torch.randn(4, 256, 64)  # gate_up: 1024 x 64 x 512 multiply-adds
    with torch.no_grad():
        ops = ops_run(lambda: mlp(x))
        fused = mlp(x)
        use_onednn_linear(False)
        plain = mlp(x)
    assert ONEDNN in ops and "aten::silu" not in ops and "aten::mul_" not in ops
    torch.testing.assert_close(fused, plain, **FLOAT32)


@needs_onednn
@pytest.mark.parametrize("model_type", ["trm", "etrm"])
def test_onednn_recursion_equals_the_f_linear_one(onednn, model_type):
    torch.manual_seed(0)  # hidden 64, batch 4: most products qualify, the smallest do not
    head = build_model(tiny_config(model_type, hidden_size=64, L_layers=2)).eval()
    batch = random_batch(head.config, 4)
    with torch.no_grad():
        ops = ops_run(lambda: head(head.initial_carry(batch), batch))
        with_onednn = head(head.initial_carry(batch), batch)[3]
        use_onednn_linear(False)
        f_linear = head(head.initial_carry(batch), batch)[3]
    assert ONEDNN in ops
    for name in f_linear:
        torch.testing.assert_close(
            with_onednn[name], f_linear[name], **FLOAT32, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_onednn_probe_draws_no_random_numbers():
    onednn_linear_available.cache_clear()
    state = torch.random.get_rng_state()
    assert isinstance(onednn_linear_available(), bool)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded runs stay reproducible

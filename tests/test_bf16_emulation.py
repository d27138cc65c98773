"""bfloat16 products on a CPU without bfloat16 units: float32 products of the bfloat16-rounded
operands, rounded back once (etrm.bfloat16). They must give the native
kernel's results within bfloat16 rounding, in one product and after the recursion, and the same
gradients where bfloat16 is kept for its faults (a logit of exactly 1.0 in stablemax). Every
x86 CPU has a native path to compare with: oneDNN's on AVX-512 BF16, ATen's slow one on AVX2."""

from __future__ import annotations

import pytest
import torch

from etrm.bfloat16 import bfloat16_products_emulated, native_bfloat16_products, use_emulated_bfloat16
from etrm.config import tiny_config
from etrm.data.datasets import fewshot_batch
from etrm.layers import CastedLinear
from etrm.models import build_model
from etrm.models.loss import IGNORE_LABEL_ID, stablemax_cross_entropy
from etrm.testing.artifacts import BUNDLED, fixtures_root

BFLOAT16_STEP = 2.0**-7  # the largest relative spacing of bfloat16 numbers (8 significant bits)


@pytest.fixture
def emulation():
    """`emulation(flag)` switches the path; the CPU's own choice is restored afterwards."""
    previous = use_emulated_bfloat16(None)
    yield use_emulated_bfloat16
    use_emulated_bfloat16(previous)


def test_one_product_is_within_one_bfloat16_rounding(emulation):
    torch.manual_seed(0)
    layer = CastedLinear(256, 1024, bias=True)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(300, 256).bfloat16()
    results = {}
    for emulated in (False, True):
        emulation(emulated)
        results[emulated] = layer(x)
    assert results[True].dtype == torch.bfloat16
    native, emulated = results[False].float(), results[True].float()
    torch.testing.assert_close(emulated, native, rtol=BFLOAT16_STEP, atol=1e-6)
    assert (emulated != native).float().mean() < 0.01  # the same roundings, but for summation order


def _episode(head, batch, steps=2):
    with torch.no_grad():
        carry = head.initial_carry(batch)
        for _ in range(steps):
            carry, _, _, out, _ = head(carry, batch)
    return out["logits"].float()


def test_recursion_is_as_close_to_native_as_native_is_to_float32(emulation):
    """After the recursion single roundings are amplified (etrm.parity): what must hold is that
    the emulated run is no farther from the native one than bfloat16's own rounding error,
    measured as the native run's distance from float32 on the same weights."""
    batch = fewshot_batch(fixtures_root() / BUNDLED["data_dir"], tiny_config("etrm"), batch_size=2)
    runs = {}
    for name, dtype, emulated in (
        ("float32", "float32", False),
        ("native", "bfloat16", False),
        ("emulated", "bfloat16", True),
    ):
        emulation(emulated)
        torch.manual_seed(0)
        runs[name] = _episode(build_model(tiny_config("etrm", forward_dtype=dtype)).eval(), batch)
    rounding = (runs["native"] - runs["float32"]).norm()
    distance = (runs["emulated"] - runs["native"]).norm()
    assert distance <= max(1.5 * rounding, 2.0**-8 * runs["native"].norm()), (distance, rounding)


def test_stablemax_gradient_at_a_logit_of_one_is_the_same(emulation):
    # Inputs and weights whose product is exactly 1.0 in bfloat16 on both paths, as a bfloat16
    # logit often is: the gradient stays finite, and is the same with either path.
    grads = {}
    for emulated in (False, True):
        emulation(emulated)
        layer = CastedLinear(4, 3)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([[0.25] * 4, [0.125] * 4, [-0.5] * 4]))
        x = torch.ones(2, 4, dtype=torch.bfloat16, requires_grad=True)
        logits = layer(x).unsqueeze(0)
        assert (logits[..., 0] == 1.0).all()
        stablemax_cross_entropy(logits, torch.tensor([[1, IGNORE_LABEL_ID]])).sum().backward()
        grads[emulated] = (x.grad.float(), layer.weight.grad)
    for native, emulated in zip(grads[False], grads[True]):
        assert torch.isfinite(emulated).all()
        torch.testing.assert_close(emulated, native, rtol=BFLOAT16_STEP, atol=1e-6)


def test_the_cpus_choice_follows_its_bfloat16_units_and_can_be_overridden(emulation):
    layer = CastedLinear(8, 8)
    x = torch.randn(2, 8).bfloat16()
    emulation(None)
    native = torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight.bfloat16()))
    emulated = torch.equal(layer(x), torch.nn.functional.linear(x.float(), layer.weight.bfloat16().float()).bfloat16())
    assert native if native_bfloat16_products() else emulated
    emulation(True)
    assert torch.equal(layer(x), torch.nn.functional.linear(x.float(), layer.weight.bfloat16().float()).bfloat16())


class _ForeignBlock(torch.nn.Module):
    """Model code that is not etrm's: a plain bfloat16 nn.Linear, a batched matmul and attention."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(64, 64, bias=True).bfloat16()

    def forward(self, x):
        h = self.proj(x)
        heads = h.unflatten(-1, (4, 16)).transpose(1, 2)
        # By keyword, as the official TRM's Attention calls it.
        attended = torch.nn.functional.scaled_dot_product_attention(query=heads, key=heads, value=heads)
        attended = attended.transpose(1, 2).flatten(2)
        return torch.softmax(h @ h.transpose(-1, -2), dim=-1) @ h + attended


def test_foreign_code_runs_its_products_emulated_under_the_mode_and_natively_without(emulation):
    """etrm.interface runs the researcher's model under bfloat16_products_emulated(): its
    products become float32 products of the same operands, rounded once. Output and gradient are
    no farther from the native run than bfloat16's own rounding error (the native run's distance
    from float32 on the same weights; a peaked softmax amplifies single roundings)."""
    torch.manual_seed(0)
    block = _ForeignBlock()
    x = torch.randn(3, 20, 64).bfloat16()

    def run(emulated, dtype=torch.bfloat16):
        emulation(emulated)
        model = block if dtype == torch.bfloat16 else _ForeignBlock().to(dtype)
        if model is not block:
            model.load_state_dict(block.state_dict())
        model.zero_grad()
        with bfloat16_products_emulated():
            out = model(x.to(dtype))
        out.float().square().sum().backward()
        return out.float(), model.proj.weight.grad.float().clone()

    native, emulated, exact = run(False), run(True), run(False, torch.float32)
    for n, e, f in zip(native, emulated, exact):
        assert (e - n).norm() <= max(1.5 * (n - f).norm(), 2.0**-8 * n.norm()), ((e - n).norm(), (n - f).norm())
    emulation(True)
    with bfloat16_products_emulated():
        assert block.proj(x).dtype == torch.bfloat16
        assert torch.equal(
            block.proj(x),
            torch.nn.functional.linear(x.float(), block.proj.weight.float(), block.proj.bias.float()).bfloat16(),
        )
        y = x.float()
        assert torch.equal(y @ y.transpose(-1, -2), torch.bmm(y, y.transpose(-1, -2)))  # float32 untouched

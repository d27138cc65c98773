"""CUDA paths (marker `gpu`): run with `pytest -m gpu -n 0` (or `tox -e gpu`) on a GPU machine.

Without CUDA these are collected and skipped with the reason (the etrm plugin does that),
so nothing here touches CUDA at import time.

Tolerances: float32 compares CUDA with CPU directly (no TF32: torch's default matmul
precision is "highest"); reordered float32 sums, grown through a recursion of post-norm
blocks, stay far below 1e-4 on O(1) values. In bfloat16 a flipped last bit (2^-8) grows
through the recursion, so CUDA and CPU differ by more than rounding there; what must hold
is that the CUDA run is as accurate as the CPU run, both measured against the same
weights computing in float32.
"""

from __future__ import annotations

import copy

import pytest
import torch

from etrm.config import tiny_config
from etrm.layers import Attention, RotaryEmbedding
from etrm.models import InnerCarry, LossHead, build_model
from etrm.synthetic import random_batch

pytestmark = pytest.mark.gpu

CUDA = "cuda"
FLOAT32 = dict(rtol=1e-4, atol=1e-4)
DTYPES = ["float32", "bfloat16"]
# A bfloat16 result may be at most this much less accurate than its CPU counterpart
# (mean absolute error against float32), plus a floor for when both are near exact.
BF16_ERROR_RATIO, BF16_ERROR_FLOOR = 1.5, 2e-3


def twins(model_type: str, dtype: str = "float32", **overrides) -> tuple[LossHead, LossHead]:
    """The same tiny model on CPU and on CUDA (no halting exploration: no random draws)."""
    torch.manual_seed(0)
    cpu = build_model(tiny_config(model_type, forward_dtype=dtype, halt_exploration_prob=0.0, **overrides))
    return cpu, copy.deepcopy(cpu).to(CUDA)


def float32_twin(head: LossHead) -> LossHead:
    """Same weights (H_init/L_init upcast), computing in float32 on CPU: the accuracy yardstick."""
    twin = build_model(head.config.replace(forward_dtype="float32"))
    twin.load_state_dict({k: v.cpu() for k, v in head.state_dict().items()})
    return twin


def to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def assert_as_accurate(cuda_out: torch.Tensor, cpu_out: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    cuda_err = (cuda_out.cpu().float() - truth).abs().mean().item()
    cpu_err = (cpu_out.float() - truth).abs().mean().item()
    assert cuda_err <= BF16_ERROR_RATIO * cpu_err + BF16_ERROR_FLOOR, (
        f"{what}: bfloat16 mean error vs float32 is {cuda_err:.4g} on CUDA but {cpu_err:.4g} on CPU"
    )


def decoder_step(head: LossHead, carry: InnerCarry, batch: dict[str, torch.Tensor]):
    inner = head.model.inner
    with torch.no_grad():
        new, logits, q_halt, q_cont = inner(carry, batch["inputs"], inner.puzzle_prefix(batch["puzzle_identifiers"]))
    return {"z_H": new.z_H, "z_L": new.z_L, "logits": logits, "q_halt": q_halt, "q_continue": q_cont}


def random_carry(head: LossHead, batch_size: int, device: str) -> InnerCarry:
    cfg, dtype = head.config, head.model.inner.forward_dtype
    gen = torch.Generator().manual_seed(1)
    shape = (batch_size, cfg.full_seq_len, cfg.hidden_size)
    return InnerCarry(
        z_H=torch.randn(shape, generator=gen).to(device, dtype), z_L=torch.randn(shape, generator=gen).to(device, dtype)
    )


def episode(head: LossHead, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A whole evaluation episode (halt_max_steps ACT steps): per-step outputs and loss."""
    head.eval()
    carry, steps = head.initial_carry(batch), []
    with torch.no_grad():
        for _ in range(head.config.halt_max_steps):
            carry, loss, _, outputs, _ = head(carry, batch)
            steps.append(
                {
                    "logits": outputs["logits"],
                    "q_halt": outputs["q_halt_logits"],
                    "loss": loss,
                    **({"context": outputs["context"]} if "context" in outputs else {}),
                }
            )
    return steps


# --- CUDA vs CPU -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_recursion_step_cuda_matches_cpu(dtype):
    cpu, cuda = twins("trm", dtype, L_layers=2)
    with torch.no_grad():
        cpu.model.inner.puzzle_emb.weights.normal_()
        cuda.model.inner.puzzle_emb.weights.copy_(cpu.model.inner.puzzle_emb.weights)
    batch = random_batch(cpu.config, 3)
    got = decoder_step(cuda, random_carry(cuda, 3, CUDA), to(batch, CUDA))
    expected = decoder_step(cpu, random_carry(cpu, 3, "cpu"), batch)
    if dtype == "float32":
        for name, value in expected.items():
            torch.testing.assert_close(got[name].cpu(), value, **FLOAT32, msg=lambda m, name=name: f"{name}: {m}")
    else:
        exact = float32_twin(cpu)
        truth = decoder_step(exact, random_carry(exact, 3, "cpu"), batch)
        for name in ("logits", "z_H"):
            assert_as_accurate(got[name], expected[name], truth[name], name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_type", ["trm", "etrm", "etrmtrm"])
def test_act_episode_cuda_matches_cpu(model_type, dtype):
    cpu, cuda = twins(model_type, dtype)
    batch = random_batch(cpu.config, 3, demo_counts=[4, 2, 0] if cpu.config.uses_encoder else None)
    got, expected = episode(cuda, to(batch, CUDA)), episode(cpu, batch)
    truth = episode(float32_twin(cpu), batch) if dtype == "bfloat16" else None
    for step, (g, e) in enumerate(zip(got, expected)):
        for name in e:
            if dtype == "float32":
                torch.testing.assert_close(
                    g[name].cpu(), e[name], **FLOAT32, msg=lambda m, step=step, name=name: f"step {step} {name}: {m}"
                )
            elif name in ("logits", "context"):
                assert_as_accurate(g[name], e[name], truth[step][name], f"step {step} {name}")


# --- attention backends ------------------------------------------------------------------------

BACKENDS = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]


def attention_inputs(dtype: torch.dtype):
    torch.manual_seed(0)
    attn = Attention(hidden_size=64, num_heads=4).to(CUDA)
    rope = RotaryEmbedding(head_dim=16, max_positions=104, base=10000.0).to(CUDA)
    x = torch.randn(2, 104, 64, device=CUDA).to(dtype)
    return attn, rope, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sdpa_backend_matches_math(backend, dtype):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attn, rope, x = attention_inputs(dtype)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        expected = attn(x, rope())
    try:
        with torch.no_grad(), sdpa_kernel(getattr(SDPBackend, backend)):
            got = attn(x, rope())
    except RuntimeError as err:  # "No available kernel": this device or dtype lacks the backend
        pytest.skip(f"{backend} is not offered for {dtype} on {torch.cuda.get_device_name()}: {str(err)[:120]}")
    tol = FLOAT32 if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)  # one bfloat16 rounding of O(1) values
    torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sdpa_backend_recursion_is_as_accurate_as_math(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cpu, cuda = twins("trm", "bfloat16")
    batch = to(random_batch(cpu.config, 2), CUDA)
    carry = random_carry(cuda, 2, CUDA)
    with sdpa_kernel(SDPBackend.MATH):
        expected = decoder_step(cuda, carry, batch)
    try:
        with sdpa_kernel(getattr(SDPBackend, backend)):
            got = decoder_step(cuda, carry, batch)
    except RuntimeError as err:
        pytest.skip(f"{backend} is not offered for bfloat16 on {torch.cuda.get_device_name()}: {str(err)[:120]}")
    exact = float32_twin(cpu)
    truth = decoder_step(exact, random_carry(exact, 2, "cpu"), to(batch, "cpu"))
    assert_as_accurate(got["logits"], expected["logits"].cpu(), truth["logits"], f"{backend} logits")


# --- torch.compile -------------------------------------------------------------------------


def training_step_grads(head: LossHead, run, batch: dict[str, torch.Tensor]):
    """One training ACT step through `run` (the head itself or its compiled wrapper)."""
    head.train()
    carry, loss, _, outputs, _ = run(head.initial_carry(batch), batch)
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in head.named_parameters()}
    head.zero_grad(set_to_none=True)
    return loss.detach(), outputs["logits"], grads


@pytest.mark.parametrize("model_type", ["trm", "etrm", "etrmtrm"])
def test_compile_matches_eager_forward_and_gradients(model_type):
    _, eager = twins(model_type)
    twin = copy.deepcopy(eager)
    batch = to(random_batch(eager.config, 3, demo_counts=[4, 2, 1] if eager.config.uses_encoder else None), CUDA)
    loss, logits, grads = training_step_grads(eager, eager, batch)
    c_loss, c_logits, c_grads = training_step_grads(twin, torch.compile(twin), batch)
    torch.testing.assert_close(c_loss, loss, **FLOAT32)
    torch.testing.assert_close(c_logits, logits, **FLOAT32)
    assert c_grads.keys() == grads.keys()
    for name, g in grads.items():
        assert (g is None) == (c_grads[name] is None), f"{name}: gradient presence differs under compile"
        if g is not None:  # relative to the gradient's scale: sums over many terms
            torch.testing.assert_close(
                c_grads[name],
                g,
                rtol=0,
                atol=1e-4 * max(g.abs().max().item(), 1e-6),
                msg=lambda m, name=name: f"{name}: {m}",
            )
    if eager.config.uses_encoder:
        starved = [n for n, g in c_grads.items() if n.startswith("model.encoder.") and (g is None or not g.abs().sum())]
        assert not starved, f"encoder parameters without gradient under torch.compile: {starved}"


# --- optimizer, checkpoints, memory ----------------------------------------------------------


def test_adamatan2_step_cuda_matches_cpu():
    from etrm.optim import AdamATan2

    torch.manual_seed(0)
    weights = [torch.randn(64, 32), torch.randn(32)]
    grads = [[torch.randn_like(w) for w in weights] for _ in range(3)]
    results = {}
    for device in ("cpu", CUDA):
        params = [torch.nn.Parameter(w.clone().to(device)) for w in weights]
        opt = AdamATan2(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(device)
            opt.step()
        results[device] = [p.detach().cpu() for p in params]
    for got, expected, start in zip(results[CUDA], results["cpu"], weights):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
        assert not torch.equal(got, start)  # the steps did move it


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamatan2_matches_the_adam_atan2_package(weight_decay):
    package = pytest.importorskip(
        "adam_atan2",
        reason="the adam-atan2 package (0.0.3, what the official trainer "
        "imports) is not installed: `pip install adam-atan2==0.0.3` builds its CUDA kernel",
    )
    from etrm.optim import AdamATan2

    torch.manual_seed(0)
    weights = [torch.randn(shape) for shape in [(1,), (64, 32), (7, 3, 5)]]
    grads = [[torch.randn_like(w) * scale for w in weights] for scale in (1.0, 0.1, 3.0, 1e-3, 0.5)]
    results = {}
    for name, cls in (("etrm", AdamATan2), ("package", package.AdamATan2)):
        params = [torch.nn.Parameter(w.clone().to(CUDA)) for w in weights]
        opt = cls(params, lr=1e-2, betas=(0.9, 0.95), weight_decay=weight_decay)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(CUDA)
            opt.step()
        results[name] = [p.detach().cpu() for p in params]
    for ours, theirs, start in zip(results["etrm"], results["package"], weights):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        assert not torch.equal(ours, start)


def test_pretrained_decoder_loads_directly_to_cuda(tmp_path):
    from etrm.checkpoints import load_pretrained_decoder, save_checkpoint

    torch.manual_seed(0)
    trm = build_model(tiny_config("trm"))
    path = save_checkpoint(tmp_path / "trm.pt", trm, step=1)
    torch.manual_seed(1)
    etrm = build_model(tiny_config("etrm")).to(CUDA)
    encoder_before = {n: p.detach().clone() for n, p in etrm.model.encoder.named_parameters()}
    report = load_pretrained_decoder(etrm, path, map_location=CUDA)
    assert report.ok
    expected = trm.model.inner.state_dict()
    for name, tensor in etrm.model.inner.state_dict().items():
        if name in expected:
            assert tensor.device.type == "cuda", name
            assert torch.equal(tensor.cpu(), expected[name]), f"{name} differs from the checkpoint"
    for name, p in etrm.model.encoder.named_parameters():
        assert torch.equal(p, encoder_before[name]), f"encoder {name} was touched"


@pytest.mark.parametrize("model_type", ["trm", "etrm"])
def test_gpu_memory_does_not_grow_over_50_eval_steps(model_type):
    _, head = twins(model_type)
    head.eval()
    batch = to(random_batch(head.config, 4), CUDA)
    carry = head.initial_carry(batch)
    allocated = []
    with torch.no_grad():
        for step in range(50):
            carry, *_ = head(carry, batch)
            if step % 10 == 9:
                torch.cuda.synchronize()
                allocated.append(torch.cuda.memory_allocated())
    assert max(allocated) <= allocated[0], (
        f"CUDA memory grew across evaluation steps: {allocated} bytes at steps 10..50"
    )

"""AdamATan2, sparse sign-SGD and the learning-rate schedule against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from etrm.models.trm import PuzzleEmbedding
from etrm.optim import AdamATan2, SparseSignSGD, lr_schedule


def package_adam_atan2(
    p0: list[float], grads: list[list[float]], lr: float, betas: tuple[float, float], wd: float
) -> list[float]:
    """The `adam-atan2` 0.0.3 kernel's update, per element in float64 Python arithmetic:
    moments by lerp, then `p *= 1 - lr*wd; p -= lr/bc1 * atan2(m, sqrt(v)/sqrt(bc2))`."""
    b1, b2 = betas
    p, m, v = list(p0), [0.0] * len(p0), [0.0] * len(p0)
    for t, g in enumerate(grads, start=1):
        step_size, bc2_sqrt = lr / (1 - b1**t), math.sqrt(1 - b2**t)
        for i, gi in enumerate(g):
            m[i] += (1 - b1) * (gi - m[i])
            v[i] += (1 - b2) * (gi * gi - v[i])
            p[i] = p[i] * (1 - lr * wd) - step_size * math.atan2(m[i], math.sqrt(v[i]) / bc2_sqrt)
    return p


def run_adam(p0: torch.Tensor | list[float], grads: list, **kwargs) -> torch.Tensor:
    param = torch.nn.Parameter(torch.as_tensor(p0).clone())
    opt = AdamATan2([param], **kwargs)
    for g in grads:
        param.grad = torch.as_tensor(g).reshape(param.shape).to(param.dtype)
        opt.step()
    return param.detach()


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("shape", [(1,), (3, 4), (2, 3, 5)])
def test_adam_atan2_matches_the_package_update_over_several_steps(shape, wd):
    gen = torch.Generator().manual_seed(sum(shape))
    p0 = torch.randn(shape, generator=gen)
    grads = [torch.randn(shape, generator=gen) * scale for scale in (1.0, 0.1, 3.0, 1e-3, 0.5, 1.0)]
    got = run_adam(p0, grads, lr=0.05, betas=(0.9, 0.95), weight_decay=wd)
    want = package_adam_atan2(
        p0.flatten().tolist(), [g.flatten().tolist() for g in grads], lr=0.05, betas=(0.9, 0.95), wd=wd
    )
    torch.testing.assert_close(got, torch.tensor(want).reshape(shape), rtol=1e-6, atol=1e-6)


def test_adam_atan2_first_update_is_lr_atan_of_one_minus_beta1_over_one_minus_beta1():
    # bc1 scales the step outside the atan2: atan(0.1)/0.1 = 0.997 lr, not atan(1) = 0.785 lr.
    got = run_adam([1.0, 1.0], [[0.3, -2.0]], lr=0.01, betas=(0.9, 0.95), weight_decay=0.0)
    step = 0.01 * math.atan(0.1) / 0.1
    torch.testing.assert_close(got, torch.tensor([1.0 - step, 1.0 + step]), rtol=0, atol=1e-7)
    assert step == pytest.approx(0.00996687, rel=1e-5)


def test_adam_atan2_has_no_epsilon_so_tiny_gradients_move_as_much_as_large_ones():
    # With Adam's eps, gradients of 1e-12 would give updates ~1e-4 of the large-gradient ones.
    grads = [[0.3, -1.0], [-0.2, -0.5]]
    tiny = [[g * 1e-12 for g in step] for step in grads]
    kwargs = dict(lr=0.1, betas=(0.9, 0.95), weight_decay=0.0)
    torch.testing.assert_close(run_adam([1.0, 1.0], tiny, **kwargs), run_adam([1.0, 1.0], grads, **kwargs))


def test_adam_atan2_skips_parameters_without_grad_but_decays_zero_grads():
    # The reason a frozen part must have grad None, not a zero grad.
    skipped = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    zeroed = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = AdamATan2([skipped, zeroed], lr=0.1, weight_decay=0.5)
    zeroed.grad = torch.zeros(2)
    opt.step()
    assert torch.equal(skipped, torch.tensor([1.0, -1.0])) and not opt.state[skipped]
    torch.testing.assert_close(zeroed.detach(), torch.tensor([0.95, -0.95]))


def test_adam_atan2_keeps_float32_moments_for_bfloat16_parameters():
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    param.grad = torch.full((3,), 0.5, dtype=torch.bfloat16)
    opt = AdamATan2([param], lr=0.01, weight_decay=0.0)
    opt.step()
    assert opt.state[param]["exp_avg"].dtype == torch.float32 and param.dtype == torch.bfloat16
    # First step: 0.997 lr; bfloat16 holds 1 - 0.00997 as 0.9922 (spacing 2^-8 below 1).
    want = torch.full((3,), 1 - 0.01 * math.atan(0.1) / 0.1).bfloat16()
    assert torch.equal(param.detach(), want)


@pytest.mark.parametrize("kwargs", [dict(lr=-1.0), dict(weight_decay=-0.1), dict(betas=(0.9, 1.0))])
def test_adam_atan2_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match="AdamATan2"):
        AdamATan2([torch.nn.Parameter(torch.ones(1))], **kwargs)


# --- sparse sign-SGD -----------------------------------------------------------------------------


def embedding_with_grads(ids: list[int], grads: torch.Tensor) -> tuple[PuzzleEmbedding, torch.Tensor]:
    emb = PuzzleEmbedding(8, 3, torch.float32).train()
    emb.weights.copy_(torch.arange(24, dtype=torch.float32).view(8, 3) / 10 - 1)
    before = emb.weights.clone()
    out = emb(torch.tensor(ids, dtype=torch.int32))
    (out * grads).sum().backward()  # d/d(rows) = grads
    return emb, before


def test_sign_sgd_updates_only_used_rows_with_summed_gradient_sign():
    grads = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, -0.5], [-3.0, 1.0, 0.0]])
    emb, before = embedding_with_grads([3, 5, 3], grads)
    opt = SparseSignSGD(emb, lr=0.1, weight_decay=0.5)
    opt.step()
    want = before.clone()
    # Row 3 appears twice: its gradients add up before the sign ([-2, -1, 0]).
    want[3] = before[3] * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([-1.0, -1.0, 0.0])
    want[5] = before[5] * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([1.0, 1.0, -1.0])
    torch.testing.assert_close(emb.weights, want)
    unused = [i for i in range(8) if i not in (3, 5)]
    assert torch.equal(emb.weights[unused], before[unused])  # no decay on unused rows either


def test_sign_sgd_step_without_a_forward_is_a_no_op_and_zero_grad_drops_the_rows():
    emb, before = embedding_with_grads([1], torch.ones(1, 3))
    opt = SparseSignSGD(emb, lr=0.1, weight_decay=0.1)
    opt.zero_grad()
    assert emb.local_weights is None
    opt.step()
    assert torch.equal(emb.weights, before)


def test_sign_sgd_on_a_trm_head_moves_exactly_the_batch_identifiers():
    from etrm.config import tiny_config
    from etrm.models import build_model
    from etrm.synthetic import random_batch

    torch.manual_seed(0)
    cfg = tiny_config("trm", seq_len=16, H_cycles=1, L_cycles=1)
    head = build_model(cfg).train()
    emb = head.model.inner.puzzle_emb
    emb.weights.normal_()
    before = emb.weights.clone()
    batch = random_batch(cfg, 4, seed=3)
    _, loss, *_ = head(head.initial_carry(batch), batch)
    loss.backward()
    SparseSignSGD(emb, lr=0.01, weight_decay=0.1).step()
    used = sorted(set(batch["puzzle_identifiers"].tolist()))
    changed = [i for i in range(cfg.num_puzzle_identifiers) if not torch.equal(emb.weights[i], before[i])]
    assert changed == used


def test_sign_sgd_rejects_a_non_embedding():
    with pytest.raises(TypeError, match="PuzzleEmbedding"):
        SparseSignSGD(torch.nn.Linear(2, 2))


# --- schedule ------------------------------------------------------------------------------------


def test_lr_schedule_warms_up_linearly_then_stays_constant_with_min_ratio_one():
    lrs = [lr_schedule(s, 1e-4, 2000, 10_000, 1.0) for s in (0, 1, 1000, 2000, 5000, 10_000, 20_000)]
    assert lrs == pytest.approx([0.0, 5e-8, 5e-5, 1e-4, 1e-4, 1e-4, 1e-4], rel=1e-12)


def test_lr_schedule_cosine_decays_to_min_ratio():
    base, warm, total, ratio = 2.0, 10, 110, 0.1
    assert lr_schedule(10, base, warm, total, ratio) == pytest.approx(2.0)
    assert lr_schedule(60, base, warm, total, ratio) == pytest.approx(base * (ratio + (1 - ratio) * 0.5))
    assert lr_schedule(110, base, warm, total, ratio) == pytest.approx(0.2)
    assert lr_schedule(500, base, warm, total, ratio) == pytest.approx(0.2)  # held after the horizon
    assert lr_schedule(35, base, warm, total, ratio) > lr_schedule(85, base, warm, total, ratio)


def test_lr_schedule_without_warmup_starts_at_base():
    assert lr_schedule(1, 0.5, 0, 100, 1.0) == 0.5


@pytest.mark.parametrize(
    "args", [(-1, 1.0, 0, 10, 1.0), (1, 1.0, -1, 10, 1.0), (1, 1.0, 0, 0, 1.0), (1, 1.0, 0, 10, 1.5)]
)
def test_lr_schedule_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_schedule(*args)

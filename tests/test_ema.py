"""EMA of parameters: register, update formula, frozen parameters, raw buffers, copies, state."""

from __future__ import annotations

import pytest
import torch

from etrm.config import tiny_config
from etrm.ema import EMA
from etrm.models import build_model
from etrm.suite.support import CompiledLayout


def make_head(seed: int = 0, model_type: str = "etrm"):
    torch.manual_seed(seed)
    return build_model(tiny_config(model_type))


def perturb(head, scale: float = 0.1, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_register_after_loading_gives_the_loaded_weights():
    head = make_head()
    head.load_state_dict(make_head(seed=5).state_dict())  # "pretrained" weights
    ema = EMA(head, 0.999)
    ema.register()
    assert ema.shadow.keys() == dict(head.named_parameters()).keys()
    for name, p in head.named_parameters():
        assert torch.equal(ema.shadow[name], p) and ema.shadow[name].data_ptr() != p.data_ptr()


def test_update_is_the_official_formula_for_every_parameter():
    head = make_head()
    ema = EMA(head, 0.9)
    ema.register()
    expected = {n: p.detach().clone() for n, p in head.named_parameters()}
    for step in range(2):
        perturb(head, seed=step)
        ema.update()
        for name, p in head.named_parameters():
            expected[name] = (1.0 - 0.9) * p.detach() + 0.9 * expected[name]
    for name in expected:
        torch.testing.assert_close(ema.shadow[name], expected[name], rtol=0, atol=1e-7)
    assert ema.num_updates == 2


def test_parameters_frozen_at_register_time_are_tracked_and_unfreezing_does_not_crash():
    head = make_head()
    head.model.inner.requires_grad_(False)  # frozen decoder
    ema = EMA(head, 0.5)
    ema.register()
    assert "model.inner.lm_head.weight" in ema.shadow
    ema.update()
    head.model.inner.requires_grad_(True)  # unfreeze later
    perturb(head)
    ema.update()
    p = head.model.inner.lm_head.weight.detach()
    assert not torch.equal(ema.shadow["model.inner.lm_head.weight"], p)  # it moved towards the new value ...
    copy = ema.ema_copy()
    torch.testing.assert_close(
        copy.model.inner.lm_head.weight, ema.shadow["model.inner.lm_head.weight"], rtol=0, atol=0
    )


def test_ema_copy_carries_the_shadow_and_raw_buffers_and_leaves_the_model_alone():
    head = make_head(model_type="trm")
    ema = EMA(head, 0.5)
    ema.register()
    perturb(head)
    with torch.no_grad():  # buffers change too: they must be copied raw, never averaged
        head.model.inner.H_init.add_(1.0)
        head.model.inner.puzzle_emb.weights[3] = 7.0
    ema.update()
    before = {n: t.clone() for n, t in head.state_dict().items()}
    copy = ema.ema_copy()
    for name, p in copy.named_parameters():
        assert torch.equal(p, ema.shadow[name])
    for name, b in copy.named_buffers():
        assert torch.equal(b, dict(head.named_buffers())[name])
    for name, t in head.state_dict().items():
        assert torch.equal(t, before[name]), f"ema_copy modified the model's {name}"


def test_copy_to_another_instance_takes_shadow_params_and_raw_buffers():
    head, other = make_head(seed=0, model_type="trm"), make_head(seed=9, model_type="trm")
    ema = EMA(head, 0.9)
    ema.register()
    perturb(head)
    ema.update()
    ema.copy_to(other)
    for name, p in other.named_parameters():
        assert torch.equal(p, ema.shadow[name])
    for (name, b), (_, raw) in zip(other.named_buffers(), head.named_buffers()):
        assert torch.equal(b, raw), name


def test_names_are_independent_of_compile_wrapping():
    head = make_head()
    ema = EMA(CompiledLayout(head), 0.9)  # torch.compile's key layout (tests/test_checkpoints.py)
    ema.register()
    assert all(not n.startswith("_orig_mod.") for n in ema.shadow)
    perturb(head)
    ema.update()
    plain = ema.copy_to(make_head(seed=3))
    assert torch.equal(plain.model.inner.lm_head.weight, ema.shadow["model.inner.lm_head.weight"])


def test_state_dict_round_trip_and_mismatch_errors():
    head = make_head()
    ema = EMA(head, 0.99)
    ema.register()
    perturb(head)
    ema.update()
    restored = EMA(head, 0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.rate == 0.99 and restored.num_updates == 1
    assert all(torch.equal(restored.shadow[n], ema.shadow[n]) for n in ema.shadow)
    with pytest.raises(KeyError, match="unexpected"):
        EMA(make_head(model_type="trm"), 0.9).load_state_dict(ema.state_dict())  # no encoder in TRM
    bad = ema.state_dict()
    bad["shadow"]["model.inner.lm_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="lm_head.weight"):
        EMA(head, 0.9).load_state_dict(bad)


def test_misuse_is_an_error():
    head = make_head()
    with pytest.raises(ValueError, match="rate"):
        EMA(head, 1.5)
    with pytest.raises(RuntimeError, match="register"):
        EMA(head, 0.9).update()
    ema = EMA(head, 0.9)
    ema.register()
    with pytest.raises(KeyError, match="does not match"):
        ema.copy_to(make_head(model_type="trm"))

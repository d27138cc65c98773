"""The adapter (etrm.interface): etrm's own models give through it what they give natively,
the context rule, declared capabilities, and protocol errors that name what is missing."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from etrm.bundled import fixtures_root
from etrm.checks import h2_gradient_flow as h2
from etrm.checks import h3_encoder_output as h3
from etrm.checks import h4_training_dynamics as h4
from etrm.checks import h7_encoder_capacity as h7
from etrm.config import tiny_config
from etrm.data.datasets import fewshot_batch
from etrm.interface import ProtocolError, TRMInterface, as_interface, context_tensor, find_encoder
from etrm.models import build_model
from etrm.suite.support import TINY_ENCODER_MODELS, tiny_model
from etrm.testing.artifacts import BUNDLED

SHAPE = dict(batch_size=2, puzzle_emb_len=4, hidden_size=8)


@pytest.fixture(scope="module")
def batch():
    return fewshot_batch(fixtures_root() / BUNDLED["data_dir"], tiny_model("etrm-standard").config, batch_size=3)


@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_etrm_models_give_through_the_adapter_what_they_give_natively(name, batch):
    head = tiny_model(name)
    model = TRMInterface.from_etrm(head)
    with torch.no_grad():
        head.eval()
        native_context = head.model.encoder(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
        native = head(head.initial_carry(batch), batch)  # the positional call etrm's own code makes
        adapted = model.step(model.initial_carry(batch), batch, return_keys=["logits"])
    assert torch.equal(model.first_context(batch), native_context)
    assert torch.equal(adapted.loss, native[1]) and torch.equal(adapted.outputs["logits"], native[3]["logits"])
    assert set(adapted.outputs) == {"logits"}  # return_keys filter as the official head does
    params, buffers = model.decoder_tensors()
    assert set(params) | set(buffers) == {f"model.inner.{k}" for k in head.model.inner.state_dict()}
    assert [n for n, _ in model.encoder_parameters()] == [n for n, _ in head.model.encoder.named_parameters()]


def test_the_context_rule_covers_tensors_named_fields_get_context_and_one_matching_field():
    ctx = torch.randn(2, 4, 8)

    @dataclass
    class Carry:  # the origin's TRMStyleEncoderCarry: two fields of the context's shape
        z_e_H: torch.Tensor
        z_e_L: torch.Tensor

        def get_context(self):
            return self.z_e_H

    @dataclass
    class Output:
        pooled: torch.Tensor
        latent: torch.Tensor

    class Named:
        context = ctx

    for output in (
        ctx,
        Named(),
        {"context": ctx, "kl": ctx},
        Carry(ctx, torch.zeros_like(ctx)),
        Output(torch.zeros(2, 8), ctx),
        (torch.zeros(2, 8), ctx),
        OrderedDict(pooled=torch.zeros(2, 8), c=ctx),
    ):
        assert context_tensor(output, **SHAPE) is ctx
    with pytest.raises(ProtocolError, match=r"2 field\(s\) of shape \(2, 4, 8\) \(\['\[0\]', '\[1\]'\]\)"):
        context_tensor((ctx, ctx), **SHAPE)
    with pytest.raises(ProtocolError, match=r"no field\(s\) of shape .*'pooled': \(2, 8\)"):
        context_tensor({"pooled": torch.zeros(2, 8)}, **SHAPE)


def test_a_model_without_an_encoder_is_inconclusive_naming_what_it_lacks(batch):
    trm = build_model(tiny_config("trm"))
    for result in (
        h2.check_encoder_requires_grad(trm),
        h2.check_encoder_gradient_every_step(trm, batch),
        h2.check_loss_responds_to_encoder(trm, batch),
        h3.check_context_finite(trm, batch),
        h3.check_demo_order_invariance(trm, batch),
        h7.check_context_varies_across_tasks(trm, batch, ["a", "b"]),
    ):
        assert (
            result.status == "inconclusive" and "has no demo encoder (no submodule named 'encoder')" in result.message
        )


def test_checks_needing_etrm_internals_say_so_on_other_models(batch):
    head = tiny_model("etrm-standard")
    foreign = TRMInterface(head, halt_max_steps=3, encoder=head.model.encoder, halt_exploration_prob=0.1, name="theirs")
    result = h4.check_halting_rate(foreign, batch)
    assert (
        result.status == "inconclusive" and result.message == "needs an etrm model: theirs is not one of etrm's classes"
    )
    shape = h3.check_context_shape_and_dtype(foreign, batch)
    assert shape.status == "inconclusive" and "does not say the prefix shape/dtype" in shape.message


class _ModelOnly(nn.Module):
    """An ACT model handed over without its loss head: forward gives (carry, outputs)."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def initial_carry(self, batch):
        return self.head.initial_carry(batch)

    def forward(self, carry, batch, return_keys):
        return self.head.model(carry, batch)


def test_protocol_breaks_are_errors_naming_the_missing_part(batch):
    head = tiny_model("etrm-standard")
    with pytest.raises(ProtocolError, match="has no initial_carry"):
        TRMInterface(nn.Linear(2, 2), halt_max_steps=2)
    wrong = TRMInterface(_ModelOnly(head), halt_max_steps=3)
    with pytest.raises(
        ProtocolError, match=r"returned a 2-tuple, expected \(carry, loss, metrics, outputs, all_finish\)"
    ):
        wrong.step(wrong.initial_carry(batch), batch)
    idle = TRMInterface(head, halt_max_steps=3, encoder=nn.Linear(2, 2), name="idle")
    with pytest.raises(
        ProtocolError, match="idle: the 'encoder' submodule was not called on a sample's first ACT step"
    ):
        idle.first_context(batch)
    with pytest.raises(ProtocolError, match="expected a TRMInterface or an etrm LossHead, got Linear"):
        as_interface(nn.Linear(2, 2))


def test_the_encoder_is_the_shallowest_submodule_of_that_name():
    head = tiny_model("etrm-standard")
    assert find_encoder(head) == ("model.encoder", head.model.encoder)
    assert find_encoder(head, "set_encoder")[0] == "model.encoder.set_encoder"
    assert find_encoder(head, "no_such_module") is None
    twin = nn.ModuleDict(
        {"a": nn.ModuleDict({"encoder": nn.Linear(1, 1)}), "b": nn.ModuleDict({"encoder": nn.Linear(1, 1)})}
    )
    with pytest.raises(ProtocolError, match=r"several submodules named 'encoder' \(a.encoder, b.encoder\)"):
        find_encoder(twin)

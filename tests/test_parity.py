"""etrm.parity on synthetic references: what a mismatch says, and the tolerances' rules."""

from __future__ import annotations

import json

import pytest
import torch

from etrm.parity import BFLOAT16_STEP, ParityError, Reference, first_mismatch


def write_reference(folder, steps, dtype="float32"):
    folder.mkdir(exist_ok=True)
    tensors = {"batch.inputs": torch.zeros(2, 3, dtype=torch.int32)}
    for i, outputs in enumerate(steps, start=1):
        tensors |= {f"step{i}.{k}": v for k, v in outputs.items()}
    torch.save(tensors, folder / "reference.pt")
    (folder / "reference.json").write_text(json.dumps({"steps": len(steps), "forward_dtype": dtype}))
    return Reference.load(folder)


def outputs(seed, **changes):
    gen = torch.Generator().manual_seed(seed)
    out = {
        "logits": torch.randn(2, 3, 4, generator=gen),
        "q_halt_logits": torch.randn(2, generator=gen),
        "steps": torch.tensor([seed, seed], dtype=torch.int32),
    }
    return out | changes


def test_the_first_differing_step_and_tensor_are_named_with_the_amount(tmp_path):
    ref = write_reference(tmp_path / "ref", [outputs(1), outputs(2)])
    assert first_mismatch([outputs(1), outputs(2)], ref) is None
    late = outputs(2)
    late["logits"] = late["logits"].clone()
    late["logits"][1, 2, 3] += 0.5
    wrong_q = outputs(2, q_halt_logits=outputs(2)["q_halt_logits"] + 1)
    mismatch = first_mismatch([outputs(1), {**late, "q_halt_logits": wrong_q["q_halt_logits"]}], ref)
    assert (mismatch.step, mismatch.key) == (2, "logits")
    assert "step 2 logits: max |diff| 0.5 at (1, 2, 3)" in mismatch.message and "1 of 24 values" in mismatch.message


def test_integer_outputs_compare_exactly_and_missing_ones_are_named(tmp_path):
    ref = write_reference(tmp_path / "ref", [outputs(1)])
    assert (
        "step 1 steps: differs at (0,): ours 7, reference 1"
        in first_mismatch([outputs(1, steps=torch.tensor([7, 1], dtype=torch.int32))], ref).message
    )
    assert "missing from our outputs" in first_mismatch([{"logits": outputs(1)["logits"]}], ref).message
    assert "1 steps compared, ours has 0" in first_mismatch([], ref).message


def test_bfloat16_recursion_outputs_are_judged_against_our_own_rounding_error(tmp_path):
    ref = write_reference(tmp_path / "ref", [outputs(1)], dtype="bfloat16")
    truth = outputs(1)["logits"]
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(9)) * 0.05 * truth.std()
    near = {**outputs(1), "logits": truth + noise}
    exact_noisy = [{"logits": truth - noise}]  # our rounding error (ours vs exact) is twice our distance: fine
    assert first_mismatch([near], ref, exact=exact_noisy, keys=["logits"]) is None
    exact_tight = [{"logits": near["logits"] + noise / 10}]  # the distance is far above our rounding error
    assert "relative RMS distance" in first_mismatch([near], ref, exact=exact_tight, keys=["logits"]).message
    # Never tighter than one bfloat16 step: an exact run equal to ours still allows 2^-7.
    tiny = {**outputs(1), "logits": truth * (1 + BFLOAT16_STEP / 2)}
    assert first_mismatch([tiny], ref, exact=[{"logits": tiny["logits"]}], keys=["logits"]) is None
    wide = {**outputs(1), "logits": truth * (1 + 2 * BFLOAT16_STEP)}  # two steps off everywhere: not rounding
    assert (
        "relative RMS distance"
        in first_mismatch([wide], ref, exact=[{"logits": wide["logits"]}], keys=["logits"]).message
    )
    with pytest.raises(ParityError, match="pass `exact`"):
        first_mismatch([near], ref, keys=["logits"])


def test_two_bfloat16_results_one_step_apart_pass(tmp_path):
    # Seen on the origin ETRM's Q logit under ATen's AVX2 kernels: -5.0 against the origin's
    # -5.03125, adjacent bfloat16 values, while our own float32 run rounds to ours.
    ref = write_reference(tmp_path / "ref", [outputs(1, q_halt_logits=torch.tensor([-5.03125, 2.0]))], "bfloat16")
    ours = outputs(1, q_halt_logits=torch.tensor([-5.0, 2.0]))
    assert first_mismatch([ours], ref, exact=[ours], keys=["q_halt_logits"]) is None
    two_steps = outputs(1, q_halt_logits=torch.tensor([-4.96875, 2.0]))
    assert first_mismatch([two_steps], ref, exact=[two_steps], keys=["q_halt_logits"]) is not None


def test_a_bad_reference_folder_is_named(tmp_path):
    with pytest.raises(ParityError, match="reference.pt: missing"):
        Reference.load(tmp_path)
    write_reference(tmp_path / "ref", [outputs(1)])
    (tmp_path / "ref" / "reference.json").write_text(json.dumps({"steps": 2, "forward_dtype": "float32"}))
    with pytest.raises(ParityError, match="no step2.logits"):
        Reference.load(tmp_path / "ref")

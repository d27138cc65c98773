"""A stand-in for a researcher's repository, written to the official TRM / origin ETRM
interface (class, module and tensor names, signatures, return order, carry dataclasses)
and importing nothing from etrm, so the checks can be shown to work on code they did not
write. `etrm investigate --model-code tests/foreign_repo` imports it like any user's code.

Layout as in the official and origin repositories: `models/layers.py`, `models/common.py`,
`models/losses.py` (ACTLossHead), `models/encoders/`, `models/recursive_reasoning/`
(`etrm.py`: TRMWithEncoder, correct; `etrmtrm.py`: TRMWithRecurrentEncoder, whose encoder
output reaches the decoder as a detached carry, as in the origin; `etrm_variants.py`:
deliberately broken variants; `trm.py`: the official TRM's class, a model without an encoder).
`config/arch/` beside `models/` holds their configs as the origin lays them out (the origin's own
`etrm.yaml` and `etrmtrm.yaml` keys, the official `trm.yaml`, and one file per broken variant):
the CI gate's cases (tests/test_model_gate.py).

Written from the facts (not the code) of SamsungSAILMontreal/TinyRecursiveModels
`pretrain.py` (create_model, train_batch, evaluate) and `models/recursive_reasoning/trm.py`,
and of bdsaglam/etrm `pretrain_etrm.py` (create_model_encoder, load_pretrained_decoder,
train_batch_encoder), `models/losses.py`, `models/recursive_reasoning/etrm.py` and
`etrmtrm.py`, `models/encoders/base.py`, `standard.py`, `recurrent_base.py` and
`recurrent_standard.py`.
"""

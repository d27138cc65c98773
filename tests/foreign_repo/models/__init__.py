"""A stand-in for a researcher's repository, written to the official TRM / origin ETRM
interface (class, module and tensor names, signatures, return order, carry dataclasses)
and importing nothing from etrm, so the checks can be shown to work on code they did not
write. `etrm investigate --model-code tests/foreign_repo` imports it like any user's code.

Layout as in the official and origin repositories: `models/layers.py`, `models/common.py`,
`models/losses.py` (ACTLossHead), `models/encoders/`, `models/recursive_reasoning/`
(`etrm.py`: TRMWithEncoder, correct; `etrmtrm.py`: TRMWithRecurrentEncoder, whose encoder
output reaches the decoder as a detached carry, as in the origin; `etrm_variants.py`:
deliberately broken variants).
"""

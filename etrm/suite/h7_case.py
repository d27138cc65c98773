"""The H7 measurements on the checkpoint under investigation: held-out and training tasks of
its dataset, the TRM's puzzle embeddings where the TRM and its dataset are known, bounded by
`--etrm-h7-tasks` / `--etrm-h7-steps` / `--etrm-h7-act-steps` / `--etrm-h7-alpha` (`h7-tasks` /
`h7-steps` / `h7-act-steps` / `h7-alpha` under `etrm investigate`)."""

from __future__ import annotations

import functools

from etrm.checks import h7_generalisation as gen
from etrm.checks.h7_measure import H7Case, measure_case
from etrm.interface import TRMInterface
from etrm.testing.artifacts import USER


def trm_embeddings(artifacts, etrm_source: str, model: TRMInterface) -> tuple[dict | None, str]:
    """The TRM's prefixes by puzzle name, or why there are none (never a user's ETRM with our TRM)."""
    if artifacts.trm_checkpoint is None:
        return None, f"no TRM checkpoint: pass {artifacts.flag('trm_checkpoint')} PATH"
    if (artifacts.source("trm_checkpoint") == USER) != (etrm_source == USER):
        return None, (
            f"the TRM checkpoint is {artifacts.source('trm_checkpoint')} and the ETRM checkpoint "
            f"{etrm_source}: pass both of yours"
        )
    if model.missing("context_shape"):
        return None, model.missing("context_shape")
    trm = artifacts.require("trm_checkpoint")
    given = artifacts.trm_data_dir if artifacts.source("trm_data_dir") == artifacts.source("trm_checkpoint") else None
    data = gen.trm_data_for(trm, given)
    if data is None:
        return None, (
            f"{trm}: its dataset is not given and the data_paths of its all_config.yaml do not resolve: "
            f"pass {artifacts.flag('trm_data_dir')} DIR"
        )
    return gen.trm_puzzle_prefixes(trm, data, model.puzzle_emb_len, model.hidden_size)


def build_h7_case(
    model: TRMInterface,
    config,
    artifacts,
    *,
    tasks: int | None,
    steps: int,
    act_steps: int,
    source: str,
    alpha: float,
    progress: bool = True,
) -> H7Case:
    prefixes, note = trm_embeddings(artifacts, source, model)
    return measure_case(
        model,
        config,
        artifacts.data_for(config, "etrm_checkpoint"),
        prefixes,
        note,
        tasks=tasks,
        steps=steps,
        act_steps=act_steps,
        device=artifacts.device,
        progress=progress,
        alpha=alpha,
    )


# The bundled known-answer cases (fixtures/make_h7_cases.py): case -> (its TRM, encoder demo-blind).
# A case folder with an etrm.suite.h7_encoders.ENCODER_FILE is wrapped by the encoder saved there.
KNOWN_CASES = {
    "bottleneck": ("trm", True),
    "context_blind": ("trm_no_context", False),
    "memoriser": ("trm", False),
    "aligned": ("trm", False),
    "rule_solver": ("trm", False),
}


@functools.cache  # measured once per process: several controls read each case
def known_case(name: str, *, tasks: int = 8, steps: int = 8) -> H7Case:
    """A bundled case whose answer is known by construction, measured as a user's checkpoint is."""
    import pytest

    from etrm.bundled import fixtures_root
    from etrm.checkpoints import load_model
    from etrm.suite.broken import DemoBlindEncoder, with_encoder
    from etrm.suite.h7_encoders import ENCODER_FILE, wrap_saved
    from etrm.testing.verdict import NOT_RUN

    root = fixtures_root() / "h7"
    trm_name, demo_blind = KNOWN_CASES[name]
    if not (root / name / "step_final").is_file():
        pytest.skip(f"{NOT_RUN}bundled H7 case missing at {root / name}: run `python fixtures/make_h7_cases.py`")
    head = load_model(root / name / "step_final")
    if demo_blind:  # trained through this wrapper, saved without it
        head = with_encoder(head, DemoBlindEncoder)
    if (root / name / ENCODER_FILE).is_file():  # an encoder of etrm.suite.h7_encoders, saved beside it
        head = wrap_saved(head, root / name)
    config = head.config
    prefixes, note = gen.trm_puzzle_prefixes(
        root / trm_name / "step_final", root / "data" / "trm", config.puzzle_emb_len, config.hidden_size
    )
    return measure_case(
        TRMInterface.from_etrm(head),
        config,
        root / "data" / "fewshot",
        prefixes,
        note,
        tasks=tasks,
        steps=steps,
        progress=False,
    )

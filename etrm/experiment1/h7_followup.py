"""H7 after Experiment 1: scenario C (the encoder trains but is useless) is where H7's
headroom measurement answers why. `etrm experiment1` prints how to run it; with `--then-h7`
it runs it on the run's trained model in memory and its answer joins the run's report."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

SCENARIO_C = "C"


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--then-h7",
        action="store_true",
        help="after the frozen-decoder run, measure H7's context headroom, generalisation gap and "
        "embedding alignment on the trained model and add them to the report",
    )
    p.add_argument(
        "--trm-data",
        metavar="DIR",
        help="the TRM's dataset, whose identifiers.json maps tasks to its "
        "puzzle embeddings (default: its all_config.yaml's data_paths)",
    )
    p.add_argument(
        "--h7-tasks", type=int, metavar="N", help="held-out tasks H7 scores (default: 8, 5 from hidden size 256 on)"
    )
    p.add_argument(
        "--h7-alpha", type=float, default=0.05, metavar="ALPHA", help="the level of H7's tests (default: 0.05)"
    )
    p.add_argument("--h7-steps", type=int, default=8, metavar="K", help="H7's free-context steps (default: 8)")
    p.add_argument(
        "--h7-act-steps",
        type=int,
        default=4,
        metavar="A",
        help="ACT steps after which H7 scores every context (default: 4)",
    )


def hint(args: argparse.Namespace, trm: Path, checkpoint: Path) -> str:
    """How to measure the headroom of this run's encoder, from its final checkpoint."""
    audit = [
        "etrm",
        "investigate",
        "--etrm-checkpoint",
        str(checkpoint),
        "--trm-checkpoint",
        str(trm),
        "--data",
        str(args.data),
        "-m",
        "hypothesis7 or context_steering",
    ]
    return (
        "scenario C: is it the encoder, or can no context steer the decoder? Measure H7's headroom on the "
        f"run's final encoder: {shlex.join(audit)} (or add --then-h7 to this command)"
    )


def h7_records(args: argparse.Namespace, trm: Path, head, label: str) -> list:
    """The three H7 checks and the steering finding on `head` (etrm's LossHead), as verdict records."""
    from etrm.checks import h7_generalisation as gen
    from etrm.checks import h7_headroom as headroom
    from etrm.checks.h7_measure import measure_case
    from etrm.interface import TRMInterface
    from etrm.testing.verdict import TestRecord

    trm = Path(trm)
    model = TRMInterface.from_etrm(head)
    trm_data = gen.trm_data_for(trm, Path(args.trm_data) if args.trm_data else None)
    prefixes, note = gen.trm_puzzle_prefixes(trm, trm_data, model.puzzle_emb_len, model.hidden_size)
    with model.mode(training=False):
        case = measure_case(
            model,
            head.config,
            Path(args.data),
            prefixes,
            note,
            tasks=args.h7_tasks,
            steps=args.h7_steps,
            act_steps=args.h7_act_steps,
            device=args.device,
            alpha=args.h7_alpha,
        )
    m = case.measurement
    results = [
        headroom.check_context_headroom(m),
        gen.check_generalisation_gap(m),
        gen.check_embedding_alignment(m, case.train_names, case.heldout_names, prefixes),
        headroom.check_decoder_steerable(m),
    ]
    outcome = {"pass": "passed", "fail": "failed", "inconclusive": "skipped"}
    return [
        TestRecord(
            f"etrm experiment1 --then-h7 ({label})::{r.name}",
            [r.hypothesis],
            outcome=outcome[r.status],
            reason=r.message if r.status == "inconclusive" else "",
            checks=[r.to_dict()],
        )
        for r in results
    ]

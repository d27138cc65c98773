"""`etrm experiment1`: the investigation's Experiment 1 on a user's TRM checkpoint and
few-shot dataset, decided into scenario A / B / C.

The decoder is loaded from the checkpoint at its own saved settings (H_cycles, L_cycles,
hidden size, forward_dtype, ...), on the dataset's canvas, and kept frozen for the whole
run while the encoder trains (its own optimizer group, lr 3e-4, gradients clipped at 1.0,
pre- and post-clip norms logged); the test split is evaluated before the first step and
every `--eval-every` steps with etrm's ArcEvaluator. `--with-unfrozen` then runs the same
with the decoder training too, as the comparison. Each run writes `metrics.jsonl` and
`report.md` with plots into its folder (`--out`, and `--out/unfrozen`), and the scenario
is decided from that log by `decide_scenario`, the check `pytest -m experiment1
--metrics-log` runs. Ctrl-C stops the run, keeps the log of the steps done and writes
their report (exit status 130).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from etrm.config import FORWARD_DTYPES

LOG_NAME = "metrics.jsonl"
UNFROZEN_DIR = "unfrozen"
INTERRUPTED = 130  # the shell's status for a SIGINT-terminated command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment1", help="Experiment 1: frozen-decoder run on your checkpoint, scenario A/B/C",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--trm-checkpoint", required=True, metavar="PATH",
                   help="TRM checkpoint (official layout) with its all_config.yaml or etrm metadata beside it")
    p.add_argument("--data", required=True, metavar="DIR", help="few-shot dataset (etrm build-data --mode fewshot)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.jsonl, report.md and plots")
    p.add_argument("--steps", type=_positive, default=200, help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive, default=8, help="global batch size (default: %(default)s)")
    p.add_argument("--eval-every", type=_positive, metavar="K", help="evaluate every K steps (default: steps / 4)")
    p.add_argument("--max-train-groups", type=_positive, metavar="N", help="train on the first N tasks only")
    p.add_argument("--max-eval-groups", type=_positive, metavar="N", help="evaluate the first N test tasks only")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--forward-dtype", choices=FORWARD_DTYPES, metavar="DTYPE",
                   help="compute dtype (default: the checkpoint's; bfloat16 matmuls are several times slower than "
                        "float32 on CPUs without AVX512-BF16 or AMX, and the weights are float32 either way)")
    p.add_argument("--with-unfrozen", action="store_true",
                   help="also run the comparison with the decoder training (its own log in OUT/unfrozen)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model, sampler and exploration (default: 0)")
    from etrm.h7_after_experiment1 import add_options

    add_options(p)
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_experiment_model(config):
    """The model both runs train: etrm's ETRM for `config`. The one place a user's own
    model class plugs in (a `--model-code` option, to come); it must load through
    `load_pretrained_decoder` and train through `etrm.training.Trainer`."""
    from etrm.models import build_model

    return build_model(config)


def run(args: argparse.Namespace) -> int:
    import torch

    from etrm.checks.experiment1 import experiment_config_for_data
    from etrm.cli import UsageError

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available to this torch build")
    for path, what in ((args.trm_checkpoint, "--trm-checkpoint"), (args.data, "--data")):
        if not Path(path).exists():
            raise UsageError(f"{path}: not found ({what})")
    runs = [("frozen decoder", Path(args.out), True)]
    if args.with_unfrozen:
        runs.append(("unfrozen decoder (comparison)", Path(args.out) / UNFROZEN_DIR, False))
    taken = [str(folder / LOG_NAME) for _, folder, _ in runs if (folder / LOG_NAME).exists()]
    if taken:
        raise UsageError(f"{', '.join(taken)} exists; a new run never overwrites a log: choose another --out")
    # Bad content (a TRM-layout build, a canvas the checkpoint was not trained on, a decoder
    # that does not load) raises etrm's errors, which `etrm.cli.main` prints as one line.
    config = experiment_config_for_data(args.trm_checkpoint, args.data,
                                        **({"forward_dtype": args.forward_dtype} if args.forward_dtype else {}))
    for label, folder, frozen in runs:
        status = _run_one(args, config, label, folder, frozen)
        if status:
            return status
    return 0


def _run_one(args: argparse.Namespace, config, label: str, folder: Path, frozen: bool) -> int:
    from etrm.checks.experiment1 import run_frozen_decoder_experiment

    log = folder / LOG_NAME
    eval_every = args.eval_every or max(1, args.steps // 4)
    interrupted, trainer = False, None
    print(f"etrm experiment1: {label}: {args.steps} steps, batch {args.batch_size}, evaluation every {eval_every} "
          f"steps, {_describe(config)}", flush=True)
    try:
        trainer = run_frozen_decoder_experiment(
            args.trm_checkpoint, args.data, log, steps=args.steps, eval_every=eval_every, batch_size=args.batch_size,
            freeze_decoder=frozen, model_config=config, seed=args.seed, device=args.device,
            eval_at_start=True, max_train_groups=args.max_train_groups, max_eval_groups=args.max_eval_groups,
            model_factory=build_experiment_model)
    except KeyboardInterrupt:
        interrupted = True
        print("\netrm experiment1: interrupted; reporting the steps done", file=sys.stderr, flush=True)
        if not log.is_file():
            return INTERRUPTED
    _finish(args, config, label, folder, interrupted, trainer.head if trainer and frozen else None)
    return INTERRUPTED if interrupted else 0


def _finish(args: argparse.Namespace, config, label: str, folder: Path, interrupted: bool, head=None) -> None:
    """Decide the scenario from the run's own log, write the report, print both."""
    from etrm.checks.experiment1 import decide_scenario
    from etrm.metrics_log import read_metrics_log
    from etrm.report import write_report

    log = folder / LOG_NAME
    records = read_metrics_log(log)
    done = max((r["step"] for r in records if "train/lm_loss" in r), default=0)
    result = decide_scenario(records)
    run = f"{label}, {done} of {args.steps} steps" + (" (interrupted)" if interrupted else "") + \
        f", batch {args.batch_size}, seed {args.seed}, {args.device}"
    artifacts = {"TRM checkpoint": f"`{args.trm_checkpoint}`", "data": f"`{args.data}`", "run": run,
                 "model": _describe(config)}
    from etrm.h7_after_experiment1 import SCENARIO_C, h7_records, hint

    scenario_c = result.passed and str(result.numbers["scenario"]).startswith(SCENARIO_C)
    h7 = h7_records(args, head, label) if scenario_c and args.then_h7 and head is not None else []
    report = write_report(folder, _verdict(result, label, h7), log, artifacts)
    verdict = result.numbers["scenario"] if result.passed else "inconclusive"
    print(f"etrm experiment1: {label}: {verdict}")
    print(f"  {result.message}")
    for key, value in result.numbers.items():
        print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    for record in h7:
        print(f"  H7 {record.checks[0]['name']}: [{record.checks[0]['status']}] {record.checks[0]['message']}")
    if scenario_c and not h7:
        print(f"  next: {hint(args)}")
    print(f"  log: {log}\n  report: {report}", flush=True)


def _verdict(result, label: str, extra=()):
    from etrm.testing.plugin import MARKERS
    from etrm.testing.verdict import TestRecord, VerdictTable

    record = TestRecord(f"etrm experiment1 ({label})", ["experiment1"],
                        outcome="passed" if result.passed else "skipped",
                        reason="" if result.passed else result.message, checks=[result.to_dict()])
    return VerdictTable.build([record, *extra], MARKERS)


def _describe(config) -> str:
    return ", ".join(f"{name} {getattr(config, name)}" for name in
                     ("H_cycles", "L_cycles", "L_layers", "hidden_size", "halt_max_steps", "forward_dtype", "seq_len",
                      "max_demos"))

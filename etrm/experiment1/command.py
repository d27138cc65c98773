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
from etrm.errors import int_at_least
from etrm.experiment1.loop import LOG_NAME

POSITIVE = int_at_least(1)

UNFROZEN_DIR = "unfrozen"
INTERRUPTED = 130  # the shell's status for a SIGINT-terminated command


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment1",
        help="Experiment 1: frozen-decoder run on your checkpoint, scenario A/B/C",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--trm-checkpoint",
        metavar="PATH",
        help="TRM checkpoint (official layout) with its all_config.yaml or etrm metadata beside it "
        "(default: the config's load_pretrained_decoder)",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="few-shot dataset (etrm build-data --mode fewshot)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for metrics.jsonl, report.md, plots, checkpoints"
    )
    p.add_argument(
        "--config",
        metavar="YAML",
        help="the origin's experiment config (e.g. config/cfg_test_frozen_decoder"
        ".yaml), composed through its defaults by hydra; the flags below override it",
    )
    p.add_argument("--steps", type=POSITIVE, help="training steps (default: the config's epochs, else 200)")
    p.add_argument(
        "--global-batch-size",
        "--batch-size",
        dest="global_batch_size",
        type=POSITIVE,
        help="global batch over all processes, as the origin's global_batch_size (default: 8)",
    )
    p.add_argument("--eval-every", type=POSITIVE, metavar="K", help="evaluate every K steps (default: steps / 4)")
    p.add_argument(
        "--checkpoint-every",
        type=POSITIVE,
        metavar="K",
        help="write OUT/step_N and the resume state every K steps (always at the end)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--max-train-groups", type=POSITIVE, metavar="N", help="train on the first N tasks only")
    p.add_argument("--max-eval-groups", type=POSITIVE, metavar="N", help="evaluate the first N test tasks only")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--forward-dtype",
        choices=FORWARD_DTYPES,
        metavar="DTYPE",
        help="compute dtype (default: the checkpoint's; bfloat16 matmuls are several times slower than "
        "float32 on CPUs without AVX512-BF16 or AMX, and the weights are float32 either way)",
    )
    p.add_argument(
        "--model-code",
        metavar="ROOT",
        help="run your own ETRM class: the repository holding models/ "
        "(its code runs); the model is the --config's arch",
    )
    p.add_argument("--compile", action="store_true", help="run the model under torch.compile")
    p.add_argument(
        "--wandb-project", metavar="NAME", help="also log to Weights & Biases (offline with WANDB_MODE=offline)"
    )
    p.add_argument(
        "--with-unfrozen",
        action="store_true",
        help="also run the comparison with the decoder training (its own log in OUT/unfrozen)",
    )
    p.add_argument("--seed", type=int, help="seed of the model, sampler and exploration (default: 0)")
    p.add_argument(
        "--eval-context-search",
        type=POSITIVE,
        metavar="K",
        help="each evaluation also scores contexts searched K steps on each test puzzle's demonstrations "
        "(eval/searched/ARC/pass@K, docs/context-search.md)",
    )
    from etrm.experiment1.h7_followup import add_options

    add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """The command on every rank (torchrun) or in the one process."""
    from etrm.experiment1 import distributed

    if args.device == "cuda":
        _require_cuda()
    processes = distributed.start(args.device)
    try:
        return _run(args, processes)
    finally:
        distributed.stop(processes)


def _require_cuda() -> None:
    import torch

    from etrm.cli import UsageError

    if not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available to this torch build")


def _run(args: argparse.Namespace, processes) -> int:
    from etrm.cli import UsageError
    from etrm.experiment1.settings import RunSettings, settings_from_config

    composed = settings_from_config(args.config, args.data) if args.config else None
    trm = args.trm_checkpoint or (composed and composed.trm_checkpoint)
    if not trm:
        raise UsageError("no TRM checkpoint: give --trm-checkpoint (or a --config with load_pretrained_decoder)")
    for path, what in ((trm, "--trm-checkpoint"), (args.data, "--data")):
        if not Path(path).exists():
            raise UsageError(f"{path}: not found ({what})")
    if args.model_code and not composed:
        raise UsageError("--model-code builds your model from a config's arch block: give --config too")
    settings = (
        RunSettings()
        .replace(**(composed.settings if composed else {}))
        .replace(
            steps=args.steps,
            global_batch_size=args.global_batch_size,
            eval_every=args.eval_every,
            seed=args.seed,
            max_train_groups=args.max_train_groups,
            max_eval_groups=args.max_eval_groups,
            checkpoint_every=args.checkpoint_every,
        )
    )
    if settings.global_batch_size % processes.world_size:
        raise UsageError(
            f"--global-batch-size {settings.global_batch_size} does not split over {processes.world_size} "
            f"processes: each rank takes global / world size rows"
        )
    runs = [("frozen decoder", Path(args.out), True)]
    if args.with_unfrozen:
        runs.append(("unfrozen decoder (comparison)", Path(args.out) / UNFROZEN_DIR, False))
    _check_out(runs, args.resume)
    build, described = _builder(args, composed, trm, processes)
    if processes.master and composed:
        for key, why in {**composed.ignored, **described.pop("ignored", {})}.items():
            print(
                f"etrm experiment1: warning: {composed.path}: {key} changes nothing in this run ({why})",
                file=sys.stderr,
            )
    for label, folder, frozen in runs:
        status = _run_one(args, settings, build, described, trm, label, folder, frozen, processes)
        if status:
            return status
    return 0


def _check_out(runs, resume: bool) -> None:
    from etrm.cli import UsageError
    from etrm.experiment1.state import RESUME_FILE

    if resume:
        missing = [str(folder / RESUME_FILE) for _, folder, _ in runs if not (folder / RESUME_FILE).is_file()]
        if missing and len(missing) == len(runs):
            raise UsageError(f"{missing[0]}: not found; --resume continues a run that wrote a checkpoint")
        return
    taken = [str(folder / LOG_NAME) for _, folder, _ in runs if (folder / LOG_NAME).exists()]
    if taken:
        raise UsageError(
            f"{', '.join(taken)} exists; a new run never overwrites a log: choose another --out, or --resume it"
        )


def _builder(args, composed, trm, processes):
    """(a function building the model on this rank, its description with the ignored arch keys)."""
    from etrm.checks.experiment1 import experiment_config_for_data

    dtype = {"forward_dtype": args.forward_dtype} if args.forward_dtype else {}
    if args.model_code:
        from etrm.experiment1.model import build_user_model
        from etrm.experiment1.state import write_composed

        config_file = write_composed(Path(args.out), composed.doc, processes)
        return (lambda: build_user_model(args.model_code, config_file, trm, args.data)), {
            "model": f"{composed.doc['arch'].get('name')} from {args.model_code}"
        }
    from etrm.experiment1.model import build_etrm
    from etrm.experiment1.settings import model_overrides

    # Bad content (a TRM-layout build, a canvas the checkpoint was not trained on, a decoder
    # that does not load) raises etrm's errors, which `etrm.cli.main` prints as one line.
    base = experiment_config_for_data(trm, args.data, **dtype)
    overrides, ignored = model_overrides(composed, base) if composed else ({}, {})
    config = experiment_config_for_data(trm, args.data, **{**overrides, **dtype})
    return (lambda: build_etrm(trm, config)), {"model": _describe(config), "ignored": ignored}


def _run_one(args, settings, build, described, trm, label: str, folder: Path, frozen: bool, processes) -> int:
    from etrm.experiment1.loop import run_experiment

    interrupted, trainer = False, None
    if processes.master:
        print(
            f"etrm experiment1: {label}: {settings.steps} steps, global batch {settings.global_batch_size}, evaluation "
            f"every {settings.interval} steps, {processes.describe()}, {described['model']}",
            flush=True,
        )
    resume = args.resume and (folder / "resume.pt").is_file()
    try:
        trainer = run_experiment(
            build,
            args.data,
            folder,
            settings,
            processes=processes,
            frozen=frozen,
            resume=resume,
            compile_model=args.compile,
            extra_log=_wandb(args, folder, settings, processes),
            run_record={"run/model": described["model"]},
            eval_extra=_context_search(args.eval_context_search, args.data, settings, processes),
        )
        if processes.master:
            print(f"etrm experiment1: {label}: {trainer.timings.summary()}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\netrm experiment1: interrupted; reporting the steps done", file=sys.stderr, flush=True)
        if not (folder / LOG_NAME).is_file():
            return INTERRUPTED
    if processes.master:
        from etrm.checkpoints.layouts import unwrap_module

        head = unwrap_module(trainer.head) if trainer is not None and frozen else None  # for --then-h7
        _finish(args, settings, trm, described["model"], label, folder, interrupted, processes, head)
    return INTERRUPTED if interrupted else 0


def _context_search(steps: int | None, data_dir, settings, processes):
    """`eval_extra` for the loop: each evaluation also scores contexts searched `steps`
    steps on each test puzzle's demonstrations (None without --eval-context-search)."""
    if not steps:
        return None

    def searched(built, model) -> dict:
        from etrm.evaluation_search import evaluate_with_search, record_fields
        from etrm.interface import TRMInterface

        evaluation = evaluate_with_search(
            built.interface or TRMInterface.from_etrm(model),
            data_dir,
            steps,
            max_demos=built.max_demos,
            max_groups=settings.max_eval_groups,
            seed=settings.seed,
            processes=processes,
            progress=False,
        )
        return record_fields(evaluation) if evaluation is not None else {}

    return searched


def _wandb(args, folder: Path, settings, processes):
    if not (args.wandb_project and processes.master):
        return None
    from etrm.experiment1.wandb_log import WandbLog

    return WandbLog(args.wandb_project, folder, settings.to_dict())


def _finish(args, settings, trm, model: str, label: str, folder: Path, interrupted: bool, processes, head=None) -> None:
    """Decide the scenario from the run's own log, write the report, print both."""
    from etrm.checks.experiment1 import decide_scenario
    from etrm.metrics_log import read_metrics_log
    from etrm.report import write_report

    log = folder / LOG_NAME
    records = read_metrics_log(log)
    done = max((r["step"] for r in records if "train/lm_loss" in r), default=0)
    result = decide_scenario(records)
    run = (
        f"{label}, {done} of {settings.steps} steps"
        + (" (interrupted)" if interrupted else "")
        + f", batch {settings.global_batch_size}, seed {settings.seed}, {processes.describe()}"
    )
    artifacts = {"TRM checkpoint": f"`{trm}`", "data": f"`{args.data}`", "run": run, "model": model}
    from etrm.experiment1.h7_followup import SCENARIO_C, h7_records, hint

    scenario_c = result.passed and str(result.numbers["scenario"]).startswith(SCENARIO_C)
    h7 = h7_records(args, trm, head, label) if scenario_c and args.then_h7 and head is not None else []
    report = write_report(folder, _verdict(result, label, h7), log, artifacts)
    verdict = result.numbers["scenario"] if result.passed else "inconclusive"
    print(f"etrm experiment1: {label}: {verdict}")
    print(f"  {result.message}")
    for key, value in result.numbers.items():
        print(f"  {key} = {value:.4g}" if isinstance(value, float) else f"  {key} = {value}")
    for record in h7:
        print(f"  H7 {record.checks[0]['name']}: [{record.checks[0]['status']}] {record.checks[0]['message']}")
    if scenario_c and not h7:
        print(f"  next: {hint(args, trm, folder / f'step_{done}')}")
    print(f"  log: {log}\n  report: {report}", flush=True)


def _verdict(result, label: str, extra=()):
    from etrm.testing.plugin import MARKERS
    from etrm.testing.verdict import TestRecord, VerdictTable

    record = TestRecord(
        f"etrm experiment1 ({label})",
        ["experiment1"],
        outcome="passed" if result.passed else "skipped",
        reason="" if result.passed else result.message,
        checks=[result.to_dict()],
    )
    return VerdictTable.build([record, *extra], MARKERS)


def _describe(config) -> str:
    return ", ".join(
        f"{name} {getattr(config, name)}"
        for name in (
            "H_cycles",
            "L_cycles",
            "L_layers",
            "hidden_size",
            "halt_max_steps",
            "forward_dtype",
            "seq_len",
            "max_demos",
        )
    )

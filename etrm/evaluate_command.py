"""`etrm evaluate`: `etrm.inference`'s command, plus `--context-search K` (pass@K with and without
a test-time context search, `etrm.evaluation_search`), which needs the model adapter from a
layer above inference's."""

from __future__ import annotations

import json
import sys

from etrm.errors import UsageError, int_at_least
from etrm.inference import add_parser as add_evaluate_parser


def add_parser(subparsers) -> None:
    p = add_evaluate_parser(subparsers)
    p.add_argument(
        "--context-search",
        type=int_at_least(1),
        default=None,
        metavar="K",
        help="also score every test puzzle with a context searched for K steps on its demonstrations "
        "(the test query never seen), side by side with the encoder's (ETRM checkpoints only)",
    )
    p.add_argument(
        "--model-code",
        default=None,
        metavar="ROOT",
        help="with --context-search: build the checkpoint's model from your code under ROOT (RUNS that code)",
    )
    p.add_argument("--json", action="store_true", help="with --context-search: print one JSON object")
    p.add_argument(
        "--search-batch",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="with --context-search: puzzles searched and scored together (default 8)",
    )
    p.add_argument("--seed", type=int, default=0, help="with --context-search: the search's seed (default 0)")
    p.set_defaults(func=_command, inference_func=p.get_default("func"))


def _command(args) -> int:
    if args.context_search is None:
        needs = [flag for flag, given in (("--model-code", args.model_code), ("--json", args.json)) if given]
        if needs or args.search_batch is not None:
            raise UsageError(f"{(needs or ['--search-batch'])[0]} needs --context-search K")
        return args.inference_func(args)
    from etrm.experiment1 import distributed

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda but CUDA is not available to this torch build")
    if args.save_dir:
        raise UsageError("--save-dir writes one submission; with --context-search there are two: leave it out")
    processes = distributed.start(args.device)
    try:
        return _search(args, processes)
    finally:
        distributed.stop(processes)


def _search(args, processes) -> int:
    from etrm.data.datasets import DatasetFormatError, load_metadata
    from etrm.evaluation_search import DEFAULT_PUZZLES_PER_BATCH, evaluate_with_search

    model, max_demos, seq_len = _load(args, processes.device)
    if load_metadata(args.data, "test").seq_len != seq_len:
        raise DatasetFormatError(
            f"{args.data}: seq_len {load_metadata(args.data, 'test').seq_len}, but the checkpoint's model expects "
            f"{seq_len}"
        )
    evaluation = evaluate_with_search(
        model,
        args.data,
        args.context_search,
        max_demos=max_demos,
        max_groups=args.max_eval_groups,
        puzzles_per_batch=args.search_batch or DEFAULT_PUZZLES_PER_BATCH,
        seed=args.seed,
        processes=processes,
        progress=not args.json and sys.stderr.isatty(),
    )
    if evaluation is not None:
        print(json.dumps(evaluation.to_json(), indent=1) if args.json else evaluation.table())
    return 0


def _load(args, device):
    """(the model behind the adapter, its demo slots, its sequence length)."""
    from etrm.interface import TRMInterface

    if args.model_code:
        from etrm.model_code import load_model_code

        code = load_model_code(args.model_code, args.checkpoint, args.data, device=str(device))
        return code.model, code.max_demos, code.seq_len
    from etrm.checkpoints import load_model

    head = load_model(args.checkpoint).to(device)
    if not head.config.uses_encoder:
        raise UsageError(f"{args.checkpoint}: a TRM has no demonstration encoder, so no context to search")
    return TRMInterface.from_etrm(head), head.config.max_demos, head.config.seq_len

"""The options that name a run's artifacts and settings, declared once for the pytest plugin
(prefix "etrm-") and for `etrm investigate` (no prefix): the bundled fixture path of each
artifact (`BUNDLED`), each artifact's flag, metavar and meaning (`OPTIONS`), the run's other
flags (`run_options`), and the helpers that add them to a parser or rebuild a plugin command
line. `etrm.testing.artifacts` resolves the values into `Artifacts` and re-exports these names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from etrm.config.arch import MODEL_SIZES

BUNDLED: dict[str, str] = {
    "trm_checkpoint": "checkpoints/trm/step_final",
    "etrm_checkpoint": "checkpoints/etrm_unfrozen/step_final",
    "etrm_frozen_checkpoint": "checkpoints/etrm_frozen/step_final",
    "data_dir": "data/fewshot",
    "trm_data_dir": "data/trm",
    "metrics_log": "metrics/experiment1.jsonl",
}

# field -> (flag without "--" and prefix, metavar, is a directory (None: a file or a directory), what it is).
# A flag of None: bundled only.
OPTIONS: dict[str, tuple[str | None, str, bool | None, str]] = {
    "trm_checkpoint": ("trm-checkpoint", "PATH", False, "TRM checkpoint"),
    "etrm_checkpoint": ("etrm-checkpoint", "PATH", False, "ETRM checkpoint"),
    "etrm_frozen_checkpoint": (None, "", False, "frozen-decoder ETRM checkpoint"),
    "data_dir": ("data", "DIR", True, "built dataset"),
    "trm_data_dir": (
        "trm-data",
        "DIR",
        True,
        "TRM dataset build (its identifiers.json maps tasks to the TRM's puzzle embeddings)",
    ),
    "metrics_log": ("metrics-log", "PATH", False, "metrics log"),
    "model_config": ("model-config", "PATH", None, "model config"),  # etrm.config.arch: a file or a folder of them
    "model_code": (
        "model-code",
        "ROOT",
        True,
        "model code repository (the folder holding models/; its code is imported and run)",
    ),
}

PLUGIN_PREFIX = "etrm-"  # pytest: --etrm-data
CLI_PREFIX = ""  # etrm investigate: --data
DEVICES = ("cpu", "cuda")
DEFAULT_ENCODER_MODULE = "encoder"  # etrm.interface.ENCODER_MODULE


def flag(stem: str, prefix: str = PLUGIN_PREFIX) -> str:
    """The command-line flag of option `stem` ("data", "device", ...) under `prefix`."""
    return f"--{prefix}{stem}"


def run_options() -> dict[str, tuple[str, dict[str, Any]]]:
    """dest -> (flag stem, argparse keywords) of every option of an etrm run."""
    options = {
        f"etrm_{name}": (
            stem,
            {
                "metavar": metavar,
                "default": None,
                "help": f"{what} to investigate (default: {'the bundled fixture' if name in BUNDLED else 'none'})",
            },
        )
        for name, (stem, metavar, _, what) in OPTIONS.items()
        if stem is not None
    }
    options["etrm_device"] = (
        "device",
        {"choices": DEVICES, "default": "cpu", "help": "device the checks run on (default: cpu)"},
    )
    options["etrm_verdict_json"] = (
        "verdict-json",
        {"metavar": "PATH", "default": None, "help": "write the verdict table and every recorded check as JSON"},
    )
    options["etrm_runslow"] = (
        "runslow",
        {"action": "store_true", "default": False, "help": "also run etrm's slow checks (marker etrm_slow)"},
    )
    options["etrm_self_test"] = (
        "self-test",
        {
            "action": "store_true",
            "default": False,
            "help": "with your artifacts given, also run etrm's own regression tests "
            "(its model classes on the bundled fixtures; marker etrm_self_test)",
        },
    )
    options["etrm_model_size"] = (
        "model-size",
        {
            "choices": MODEL_SIZES,
            "default": MODEL_SIZES[0],
            "help": "width, layers, canvas and demo slots of a model built from "
            "--model-code and --model-config without a checkpoint "
            "(default: tiny)",
        },
    )
    options["etrm_encoder_module"] = (
        "encoder-module",
        {
            "metavar": "NAME",
            "default": DEFAULT_ENCODER_MODULE,
            "help": f"name of the demo encoder submodule in --model-code's model (default: {DEFAULT_ENCODER_MODULE})",
        },
    )
    options["etrm_allow_unchecked"] = (
        "allow-unchecked",
        {
            "action": "store_true",
            "default": False,
            "help": "exit 0 even when no check read a given --model-code, --model-config or checkpoint",
        },
    )
    # H7's context headroom (etrm.checks.h7_headroom): its cost grows with tasks x steps.
    options["etrm_h7_tasks"] = (
        "h7-tasks",
        {
            "metavar": "N",
            "type": _positive_int,
            "default": None,
            "help": "held-out tasks H7's headroom measurement scores (default: 8, 5 from hidden size 256 on; the sign "
            "test needs 5 to reach alpha 0.05)",
        },
    )
    options["etrm_h7_steps"] = (
        "h7-steps",
        {
            "metavar": "K",
            "type": _positive_int,
            "default": 8,
            "help": "optimisation steps of H7's free context per task (default: 8)",
        },
    )
    options["etrm_h7_act_steps"] = (
        "h7-act-steps",
        {
            "metavar": "A",
            "type": _positive_int,
            "default": 4,
            "help": "ACT steps after which H7 scores every context, the same for all (default: 4; halt_max_steps or "
            "more: the full evaluation episode)",
        },
    )
    options["etrm_h7_alpha"] = (
        "h7-alpha",
        {
            "metavar": "ALPHA",
            "type": _probability,
            "default": 0.05,
            "help": "the level of H7's tests across tasks (default: 0.05); its intervals are at 1 - ALPHA",
        },
    )
    return options


def _probability(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a level between 0 and 1, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_artifact_options(addoption: Callable[..., Any], prefix: str) -> None:
    """Declare the run options with `addoption` (pytest's `group.addoption` or argparse's
    `add_argument`); dests are `etrm_*` whatever the prefix, so values map across."""
    for dest, (stem, keywords) in run_options().items():
        addoption(flag(stem, prefix), dest=dest, **keywords)


def plugin_args(values: Mapping[str, Any]) -> list[str]:
    """The plugin's command line for run-option values by dest (as parsed with any prefix);
    options at their default are left out, paths made absolute."""
    argv: list[str] = []
    for dest, (stem, keywords) in run_options().items():
        value = values.get(dest, keywords["default"])
        if value == keywords["default"]:
            continue
        if keywords.get("action") == "store_true":
            argv.append(flag(stem))
        else:
            is_path = keywords.get("metavar") in ("PATH", "DIR", "ROOT")
            argv += [flag(stem), str(Path(value).expanduser().resolve()) if is_path else str(value)]
    return argv

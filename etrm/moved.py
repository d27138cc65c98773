"""Modules that moved into a subsystem package: importing the old name fails with one line
that names the new one, instead of a bare ModuleNotFoundError (or a silent second copy).

Add an entry when a module moves; `etrm/__init__.py` installs the finder."""

from __future__ import annotations

import importlib.abc
import sys

# old module name -> new module name
MOVED: dict[str, str] = {
    # Experiment 1's run: one package (issue 38)
    "etrm.experiment": "etrm.experiment1.command",
    "etrm.experiment_model": "etrm.experiment1.model",
    "etrm.experiment_run": "etrm.experiment1.loop",
    "etrm.run_config": "etrm.experiment1.settings",
    "etrm.run_state": "etrm.experiment1.state",
    "etrm.distributed": "etrm.experiment1.distributed",
    "etrm.wandb_log": "etrm.experiment1.wandb_log",
    "etrm.h7_after_experiment1": "etrm.experiment1.h7_followup",
    # the configuration readers: one package, etrm.config (its __init__ re-exports the model config)
    "etrm.config_import": "etrm.config.importer",
    "etrm.trainer_config_keys": "etrm.config.trainer_keys",
    "etrm.arch_config": "etrm.config.arch",
    "etrm.training_config": "etrm.config.training",
    # the report and its H7 section: one package, etrm.report (write_report re-exported)
    "etrm.report_h7": "etrm.report.h7",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Raises for the old names in MOVED; every other import is left to the next finder."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        raise ModuleNotFoundError(f"{fullname} moved to {new}: import it from there", name=fullname)


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())

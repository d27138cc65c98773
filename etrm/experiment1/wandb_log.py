"""Experiment 1's metrics also in Weights & Biases (`--wandb-project NAME`), as the origin
trainer logs them; `WANDB_MODE=offline` runs without network (`wandb sync` uploads later).

wandb (0.31) writes an offline run as one binary `run-<id>.wandb` file, which only its
server (after `wandb sync`) reads back: its Python package has no reader for it. So the
rows given to `wandb.log` are also written, one JSON object per line with W&B's `_step`,
to `OUT/wandb-history.jsonl`, the file `--metrics-log` reads as a W&B history (the same
shape as `run.scan_history()` dumped one row per line). A resumed run (`--resume`) redoes every
step after its checkpoint, so the history keeps only the rows before the first step it logs, as
the metrics log keeps only the records up to the checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from etrm.metrics_log import cut_log

HISTORY_FILE = "wandb-history.jsonl"


class WandbLog:
    """Called with every metrics record (rank 0 only); closed at the end of the run."""

    def __init__(self, project: str, folder: Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise ValueError("--wandb-project needs wandb (pip install 'etrm[wandb]')") from None
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, dir=str(folder), config=config, name=folder.name, reinit="finish_previous"
        )
        self._path = folder / HISTORY_FILE
        self._history = None  # opened at the first record, whose step says what a resumed run redoes

    def __call__(self, record: dict[str, Any]) -> None:
        step = record["step"]
        row = {k: v for k, v in record.items() if k != "step" and _loggable(v)}
        self.run.log(row, step=step)
        if self._history is None:  # a resumed run's first step: what the stopped run logged from it on goes
            cut_log(self._path, step - 1, key="_step")
            self._history = self._path.open("a")
        self._history.write(json.dumps({"_step": step, **row}) + "\n")
        self._history.flush()

    def close(self) -> None:
        if self._history is not None:
            self._history.close()
        self.run.finish()


def _loggable(value: Any) -> bool:
    # Strings (the decoder-load record's names) are logged by wandb as text; NaN marks "undefined".
    return isinstance(value, (int, float, str)) and not (isinstance(value, float) and math.isinf(value))

"""Training-metrics logs: the JSON lines etrm's trainer writes, and the Weights & Biases
histories of other trainers (the origin ETRM trainer logs to W&B), read into one shape.

Every reader returns a list of records, each a dict with an integer `step` and metric
values under etrm's names (`train/lm_loss`, `grad/encoder_norm_preclip`, `eval/ARC/pass@1`,
...). Formats, told apart by extension and content:

- etrm JSON lines (`MetricsLog`): one object per line with an integer `step`.
- W&B history as JSON lines (`wandb-history.jsonl`, or `run.scan_history()` dumped one
  row per line): objects with `_step`; `_runtime`, `_timestamp` and other `_` keys are
  W&B's bookkeeping and dropped, as are media objects (dicts with `_type`); nested
  dicts are flattened with `.` (the origin logs its per-set eval metrics as `{"all": {...}}`).
- W&B CSV (the UI's panel export, or `run.history().to_csv()`): a header row with a
  `Step` or `_step` column and one column per metric; an empty cell is a missing value.
  The panel export's `<run name> - <metric>` column names and its `__MIN`/`__MAX`
  band columns are understood; one run per file.

W&B records are renamed by `ORIGIN_METRIC_NAMES` (keys not listed keep their names).
Anything malformed is one `MetricsLogError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The origin trainer's W&B keys (pretrain_etrm.py, models/losses.py, models/.../etrm.py)
# -> etrm's. Loss-head metrics (`train/lm_loss`, `train/accuracy`, ...) share our names,
# but the origin divides its accuracies by every in-flight sample, not the halted ones.
ORIGIN_METRIC_NAMES = {
    # Measured AFTER clipping (clip_grad_norm_ runs first): with grad_clip_norm 1.0 a
    # value of 1.0 is the threshold, not a measurement. Only when a run had clipping
    # off (grad_clip_norm 0) are these the pre-clip norms; the log cannot say which.
    "grad/encoder_norm": "grad/encoder_norm_postclip",
    "grad/inner_norm": "grad/decoder_norm_postclip",
    "grad/total_norm": "grad/total_norm_postclip",
    "train/lr": "lr",
    "train/encoder_lr": "lr/encoder",
    "train/decoder_frozen": "frozen/decoder",
    "train/encoder_frozen": "frozen/encoder",
    "train/encoder_output_mean": "encoder/output_mean",
    "train/encoder_output_std": "encoder/output_std",
    "train/encoder_output_norm": "encoder/output_norm",
    # Despite its name, the origin computes `context.std(dim=0).mean()`: the spread across
    # the samples of a batch (padding rows included), i.e. our cross_sample_std.
    "train/encoder_token_std": "encoder/cross_sample_std",
    # ((context - batch mean) ** 2).mean(): a variance across samples; no etrm equivalent.
    "train/encoder_cross_sample_var": "encoder/cross_sample_var",
    # The evaluator's results are logged at the top level by the origin, under eval/ by us.
    **{f"ARC/pass@{k}": f"eval/ARC/pass@{k}" for k in (1, 2, 5, 10, 100, 1000)},
}
WANDB_STEP_COLUMNS = ("_step", "Step")  # run.history() / the UI's panel export
_CSV_BAND_SUFFIXES = ("__MIN", "__MAX")  # the panel export's min/max band around each line
_RUN_SEPARATOR = " - "  # panel export column: "<run name> - <metric>"


class MetricsLogError(ValueError):
    """A metrics log (or one of its lines) is unusable; the message names file and line."""


class MetricsLog:
    """Metrics as JSON lines, one object per record, each with an integer `step`.

    Training records carry `train/*`, `grad/*`, `encoder/*`, `lr*`, `frozen/*`;
    evaluation records carry `eval/*`. NaN marks a value that is undefined at that step
    (e.g. accuracies when no sample halted). An existing non-empty file is refused
    unless `append=True`, so a new run never overwrites an old run's log.
    """

    def __init__(self, path: str | Path, *, append: bool = False):
        self.path = Path(path)
        if not append and self.path.exists() and self.path.stat().st_size > 0:
            raise FileExistsError(f"{self.path}: metrics log exists; pass append=True or choose another path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        if not isinstance(record.get("step"), int):
            raise MetricsLogError(f"{self.path}: a record needs an integer 'step', got {record.get('step')!r}")
        self._file.write(json.dumps(dict(record)) + "\n")
        self._file.flush()  # a crashed or interrupted run keeps every finished step

    def read(self) -> list[dict[str, Any]]:
        return read_metrics_log(self.path)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eval_record(step: int, result: Any) -> dict[str, Any]:
    """The `eval/*` record of an `EvaluationResult` at `step`."""
    record: dict[str, Any] = {"step": step}
    record.update({f"eval/{k}": float(v) for k, v in result.metrics.items()})
    record["eval/tasks_evaluated"] = len(result.tasks_evaluated)
    return record


def context_search_evaluations(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evaluation that also scored searched contexts (`etrm experiment1
    --eval-context-search K` logs `eval/searched/ARC/pass@K` beside `eval/ARC/pass@K`): its step,
    the search's steps and puzzles, and pass@K with the encoder's contexts and the searched ones,
    named as `etrm evaluate --context-search K --json` names them."""
    found = []
    for record in records:
        searched = _pass_at_k(record, "eval/searched/ARC/")
        if searched:
            found.append(
                {
                    "step": record["step"],
                    "steps": record.get("search/steps"),
                    "puzzles": record.get("search/puzzles"),
                    "puzzles_lowered": record.get("search/puzzles_lowered"),
                    "encoder": _pass_at_k(record, "eval/ARC/"),
                    "searched": searched,
                }
            )
    return found


def context_search_block(path: str | Path | None) -> dict[str, Any]:
    """The verdict JSON's `context_search`: the log's path and its context-search evaluations;
    {} without a log or without such evaluations. An unreadable log is left to the checks that
    read it, whose error names it."""
    if path is None:
        return {}
    try:
        evaluations = context_search_evaluations(read_metrics_log(path))
    except (OSError, MetricsLogError):
        return {}
    return {"metrics_log": str(path), "evaluations": evaluations} if evaluations else {}


def _pass_at_k(record: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: float(v) for k, v in record.items() if k.startswith(prefix + "pass@")}


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics log in any of the module's formats, in file order."""
    path = Path(path)
    if not path.is_file():
        raise MetricsLogError(f"{path}: metrics log not found")
    with path.open(newline="") as handle:
        text = handle.read()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if path.suffix.lower() == ".csv" or (first and first[0] not in "{[" and "," in first):
        return _read_wandb_csv(path, text)
    if first and first[0] not in "{[":
        raise MetricsLogError(
            f"{path}:1: neither JSON lines (one object per line) nor a CSV export with a "
            f"header row; the file starts with {first[:40]!r}"
        )
    return _read_json_lines(path, text)


# --- JSON lines ------------------------------------------------------------------------------


def _read_json_lines(path: Path, text: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    wandb = None  # decided by the first record: W&B rows carry `_step`, ours `step`
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetricsLogError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise MetricsLogError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        if wandb is None:
            wandb = "_step" in record
        if wandb:
            records.append(_wandb_record(path, number, record))
        else:
            if not _is_int(record.get("step")):
                raise MetricsLogError(f"{path}:{number}: no integer 'step' in the record (keys: {sorted(record)})")
            records.append(record)
    return records


def _wandb_record(path: Path, number: int, row: Mapping[str, Any]) -> dict[str, Any]:
    step = row.get("_step")
    if not _is_int(step):
        raise MetricsLogError(f"{path}:{number}: no integer '_step' in the W&B history row (got {step!r})")
    flat: dict[str, Any] = {}
    _flatten(path, number, row, "", flat)
    return _rename(path, number, step, flat)


def _flatten(path: Path, number: int, row: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in row.items():
        if key.startswith("_") or (not prefix and key == "step"):
            continue  # W&B bookkeeping (_step, _runtime, _timestamp, _wandb); `step` is _step
        name = prefix + key
        if isinstance(value, dict):
            if "_type" not in value:  # a media object (image, table, histogram) is no metric
                _flatten(path, number, value, name + ".", out)
        elif value is None or isinstance(value, (int, float, str)):
            out[name] = _number(value) if isinstance(value, str) else value
        else:
            raise MetricsLogError(f"{path}:{number}: {name!r} holds a {type(value).__name__}, not a number")


# --- CSV -------------------------------------------------------------------------------------


def _read_wandb_csv(path: Path, text: str) -> list[dict[str, Any]]:
    rows = csv.reader(text.splitlines())
    header = next(rows, None)
    if not header:
        return []
    step_columns = [c for c in WANDB_STEP_COLUMNS if c in header]
    if not step_columns:
        raise MetricsLogError(f"{path}:1: no 'Step' or '_step' column in the header (columns: {header[:8]})")
    step_at = header.index(step_columns[0])
    metrics = _csv_metric_columns(path, header, step_at)
    lines = []
    for number, cells in enumerate(rows, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise MetricsLogError(f"{path}:{number}: {len(cells)} cells, but the header has {len(header)} columns")
        step = _number(cells[step_at].strip())
        if not isinstance(step, float) or not step.is_integer():
            raise MetricsLogError(f"{path}:{number}: step {cells[step_at]!r} is not an integer")
        values = {index: _number(cells[index].strip()) for index in metrics if cells[index].strip()}
        lines.append((number, int(step), values))  # an empty cell: not logged at this step
    # A column with any number is a metric, and then all of it must be; one without is text
    # (a run note, as a text value in a JSON-lines log).
    numeric = {index for _, _, values in lines for index, value in values.items() if isinstance(value, float)}
    records = []
    for number, step, values in lines:
        for index in numeric:
            if isinstance(values.get(index, 0.0), str):
                raise MetricsLogError(
                    f"{path}:{number}: column {header[index]!r} holds {values[index]!r}, not a number"
                )
        if values:
            records.append(_rename(path, number, step, {metrics[i]: v for i, v in values.items()}))
    return records


def _csv_metric_columns(path: Path, header: list[str], step_at: int) -> dict[int, str]:
    """Column index -> metric name, without the panel export's run prefix and band columns."""
    columns, runs = {}, set()
    for index, name in enumerate(header):
        if index == step_at or name.startswith("_") or name.endswith(_CSV_BAND_SUFFIXES):
            continue
        if _RUN_SEPARATOR in name:
            run, name = name.rsplit(_RUN_SEPARATOR, 1)
            runs.add(run)
        columns[index] = name
    if len(runs) > 1:
        raise MetricsLogError(
            f"{path}:1: columns of {len(runs)} runs ({', '.join(sorted(runs))}); export one run per file"
        )
    if len(set(columns.values())) < len(columns):
        twice = sorted({n for n in columns.values() if list(columns.values()).count(n) > 1})
        raise MetricsLogError(f"{path}:1: column(s) {twice} appear twice")
    return columns


# --- shared ----------------------------------------------------------------------------------


def _rename(path: Path, number: int, step: int, values: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    source: dict[str, str] = {}
    for key, value in values.items():
        name = ORIGIN_METRIC_NAMES.get(key, key)
        if name in source:
            raise MetricsLogError(f"{path}:{number}: {source[name]!r} and {key!r} both map to {name!r}")
        source[name] = key
        record[name] = float(value) if isinstance(value, bool) else value
    return record


def _number(text: str) -> float | str:
    """A cell or string value as a float ('NaN', 'inf' and 'Infinity' included), else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def cut_log(path: Path, step: int, key: str = "step") -> None:
    """Keep a JSON-lines log's records whose `key` is at most `step`, rewritten atomically: a
    resumed run redoes every step after its checkpoint (which is written after its step's
    evaluation). `key` is "_step" for a W&B history."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines(keepends=True) if line.strip() and json.loads(line)[key] <= step
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


__all__ = [
    "MetricsLog",
    "MetricsLogError",
    "ORIGIN_METRIC_NAMES",
    "WANDB_STEP_COLUMNS",
    "cut_log",
    "eval_record",
    "read_metrics_log",
]

"""Metrics logs of other trainers: W&B history exports (CSV, JSON lines) read into our records,
the origin trainer's names mapped to ours, and the Experiment 1 decision they support."""

from __future__ import annotations

import csv
import json
import math

import pytest

from etrm.bundled import fixtures_root
from etrm.checks.experiment1 import decide_scenario
from etrm.metrics_log import ORIGIN_METRIC_NAMES, MetricsLogError, read_metrics_log
from etrm.testing.artifacts import BUNDLED

KNOWN_LOG = fixtures_root() / BUNDLED["metrics_log"]  # the bundled frozen-decoder run (scenario C)
OURS_TO_ORIGIN = {ours: origin for origin, ours in ORIGIN_METRIC_NAMES.items()}


@pytest.fixture(scope="module")
def known():
    return read_metrics_log(KNOWN_LOG)


def wandb_rows(records, names=None):
    """W&B history rows as `wandb.log(record, step=...)` makes them: records of one step merged
    into one row, `_step`/`_runtime`/`_timestamp` added, keys renamed by `names`."""
    rows: dict[int, dict] = {}
    for record in records:
        row = rows.setdefault(
            record["step"],
            {"_step": record["step"], "_runtime": 1.5 * record["step"], "_timestamp": 1.7e9 + record["step"]},
        )
        row.update({(names or {}).get(k, k): v for k, v in record.items() if k != "step"})
    return list(rows.values())


def write_history_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_panel_csv(path, rows, run="F1_frozen", step_column="Step"):
    """The UI's panel export: "<run> - <metric>" columns with __MIN/__MAX bands; empty = missing."""
    metrics = sorted({k for row in rows for k in row if not k.startswith("_")})
    bands = ("", "__MIN", "__MAX") if run else ("",)
    extra = [] if run else ["_runtime", "_timestamp"]  # run.history().to_csv() keeps W&B's own columns
    header = [step_column] + extra + [f"{run} - {m}{b}" if run else m for m in metrics for b in bands]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            cells = [row["_step"]] + [row[k] for k in extra]
            for m in metrics:
                value = row.get(m, "")
                cells += [repr(value) if isinstance(value, float) else value] * len(bands)
            writer.writerow(cells)
    return path


def same_decision(a, b):
    # json.dumps compares NaN numbers as equal, which == would not
    return json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["history.jsonl", "panel.csv", "api.csv"])
def test_an_etrm_run_logged_to_wandb_round_trips_to_the_same_decision(tmp_path, known, fmt):
    rows = wandb_rows(known)
    path = tmp_path / fmt
    if fmt == "history.jsonl":
        write_history_jsonl(path, rows)
    else:
        write_panel_csv(path, rows, **({"run": None, "step_column": "_step"} if fmt == "api.csv" else {}))
    back = read_metrics_log(path)
    assert len(back) == len(rows)  # one record per step, as W&B stores them
    expected = decide_scenario(known)
    assert expected.numbers["scenario"] == "C: encoder trains but useless"
    assert same_decision(decide_scenario(back), expected)


def test_an_origin_run_maps_to_our_names_and_its_postclip_norms_leave_the_gradients_undecided(tmp_path, known):
    # The bundled run as the origin trainer would have logged it: no pre-clip norms.
    origin = [{k: v for k, v in r.items() if "_preclip" not in k} for r in known]
    path = write_history_jsonl(tmp_path / "wandb-history.jsonl", wandb_rows(origin, OURS_TO_ORIGIN))
    assert any("grad/encoder_norm" in line for line in path.read_text().splitlines())
    back = read_metrics_log(path)
    assert all("grad/encoder_norm_postclip" in r for r in back if "train/lm_loss" in r)
    result = decide_scenario(back)
    assert result.status == "inconclusive" and "scenario" not in result.numbers
    assert result.numbers["gradient_criterion"] == "post-clip norms only"
    assert result.numbers["scenario_if_gradients_flow"] == "C: encoder trains but useless"
    assert "only post-clip encoder norms" in result.message and "clip" in result.message
    from etrm.checks.h2_gradient_flow import check_preclip_norms_logged

    h2 = check_preclip_norms_logged(back)  # and H2 says why the mapped post-clip norms prove nothing
    assert h2.status == "inconclusive" and "a value of 1.0 is the clip threshold" in h2.message, h2.message


def test_every_origin_name_is_mapped(tmp_path):
    row = {
        "_step": 3,
        "_runtime": 9.0,
        "_timestamp": 1.7e9,
        "_wandb": {"runtime": 9},
        **{name: float(i) for i, name in enumerate(ORIGIN_METRIC_NAMES)},
        "train/lm_loss": 0.7,
        "all": {"accuracy": 0.5, "exact_accuracy": 0.0},
        "eval_predictions": {"_type": "table-file", "path": "media/table.json"},
        "num_params": 336130,
    }
    (record,) = read_metrics_log(write_history_jsonl(tmp_path / "h.jsonl", [row]))
    expected = {ours: float(i) for i, ours in enumerate(ORIGIN_METRIC_NAMES.values())}
    assert record == {
        "step": 3,
        **expected,
        "train/lm_loss": 0.7,
        "all.accuracy": 0.5,
        "all.exact_accuracy": 0.0,
        "num_params": 336130,
    }


def test_csv_empty_cells_are_missing_and_text_columns_stay_text(tmp_path):
    path = tmp_path / "export.txt"  # read as CSV by its content, whatever the extension
    path.write_text("Step,train/lm_loss,ARC/pass@1,note\n1,2.5,,run a\n2,nan,0.25,\n3,,,\n")
    first, second = read_metrics_log(path)  # step 3 logged nothing
    assert first == {"step": 1, "train/lm_loss": 2.5, "note": "run a"}
    assert set(second) == {"step", "train/lm_loss", "eval/ARC/pass@1"} and math.isnan(second["train/lm_loss"])


# --- malformed logs: one error naming the file and line --------------------------------------


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("h.csv", "train/lm_loss,x\n1,2\n", r"h\.csv:1: no 'Step' or '_step' column"),
        ("h.csv", "Step,train/lm_loss\n1,2.0\n2,2.0,3\n", r"h\.csv:3: 3 cells, but the header has 2 columns"),
        (
            "h.csv",
            "Step,train/lm_loss\n1,2.0\n2,oops\n",
            r"h\.csv:3: column 'train/lm_loss' holds 'oops', not a number",
        ),
        ("h.csv", "Step,train/lm_loss\n1.5,2.0\n", r"h\.csv:2: step '1.5' is not an integer"),
        ("h.csv", "Step,a - train/lm_loss,b - train/lm_loss\n1,2,3\n", r"h\.csv:1: columns of 2 runs \(a, b\)"),
        ("h.jsonl", '{"_step": 1, "x": 1}\n{"x": 2}\n', r"h\.jsonl:2: no integer '_step' in the W&B history row"),
        ("h.jsonl", '{"_step": 1, "x": [1, 2]}\n', r"h\.jsonl:1: 'x' holds a list, not a number"),
        (
            "h.jsonl",
            '{"_step": 1, "grad/encoder_norm": 1, "grad/encoder_norm_postclip": 1}\n',
            r"h\.jsonl:1: 'grad/encoder_norm' and 'grad/encoder_norm_postclip' both map to 'grad/encoder_norm_postclip'",
        ),
        (
            "h.csv",
            "Step,train/lm_loss,train/lm_loss\n1,2,3\n",
            r"h\.csv:1: column\(s\) \['train/lm_loss'\] appear twice",
        ),
        ("h.log", "step 1 loss 2.0\n", r"h\.log:1: neither JSON lines .* nor a CSV export"),
    ],
)
def test_malformed_logs_name_file_and_line(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(MetricsLogError, match=match):
        read_metrics_log(tmp_path / name)


def test_a_resumed_runs_wandb_history_drops_the_rows_it_redoes(tmp_path, monkeypatch):
    """Stopped after step 3, checkpointed at 2: the resumed run logs 3 and 4 again, and the
    history must hold each step once (wandb itself is replaced: its init costs seconds)."""
    import sys
    import types

    from etrm.experiment1.wandb_log import HISTORY_FILE, WandbLog

    run = types.SimpleNamespace(log=lambda row, step: None, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: run))
    for steps in (range(0, 4), range(3, 5)):
        log = WandbLog("p", tmp_path, {})
        for step in steps:
            log({"step": step, "train/lm_loss": float(step)})
        log.close()
    history = read_metrics_log(tmp_path / HISTORY_FILE)
    assert [(r["step"], r["train/lm_loss"]) for r in history] == [(s, float(s)) for s in range(5)]

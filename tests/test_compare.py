"""`etrm compare` and `etrm investigate --baseline` on real runs (docs/compare.md).

The cases are trained here, once per module: the bundled TRM's decoder, frozen, with an ETRM
encoder trained for a few steps on the bundled few-shot data (Experiment 1), as
`fixtures/make_checkpoints.py` makes the bundled frozen ETRM. Why each answer is true:
- "clean" (seed 0) and "seed1" train the correct ETRM: gradients reach the encoder, so H2 has no
  evidence, and another seed changes no decisive number past its tolerance;
- "detached" trains `etrm.suite.broken.DetachedEncoderETRM`, whose context is detached before the
  decoder reads it: the encoder gets no gradient, so its logged pre-clip norms are 0 (H2
  evidence, check encoder_norm_preclip_in_log) and the run is scenario B (stuck) where the clean
  one is C.
The investigations read only the runs' metrics logs (-k training_log / frozen_decoder_run), so
each takes a fraction of a second; the checkpoint-level runs are in test_compare_slow.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from etrm.bundled import fixtures_root
from etrm.cli import main
from etrm.testing.verdict import JSON_VERSION, VerdictJSONError, read_verdict_json

STEPS = 20  # at 10 the clean seed-0 loss has not fallen enough yet to tell C from B
SELECTION = ["-m", "hypothesis2 or experiment1", "-k", "training_log or frozen_decoder_run", "-n", "0"]


def train(out: Path, seed: int, detached: bool) -> Path:
    """An Experiment 1 run (frozen bundled TRM decoder) into `out`: metrics.jsonl and step_final."""
    import torch

    from etrm.checkpoints import save_checkpoint
    from etrm.checks.experiment1 import run_frozen_decoder_experiment
    from etrm.models import LossHead
    from etrm.suite.broken import DetachedEncoderETRM

    torch.set_num_threads(1)
    out.mkdir(parents=True)
    trainer = run_frozen_decoder_experiment(
        fixtures_root() / "checkpoints" / "trm" / "step_final",
        fixtures_root() / "data" / "fewshot",
        out / "metrics.jsonl",
        steps=STEPS,
        eval_every=STEPS // 2,
        batch_size=8,
        seed=seed,
        progress=False,
        model_factory=(lambda config: LossHead(DetachedEncoderETRM(config))) if detached else None,
        max_eval_groups=1,
    )
    save_checkpoint(out / "step_final", trainer.head, step=STEPS, training_config=trainer.config.to_dict())
    return out


def etrm(*argv: str) -> tuple[int, str]:
    """`etrm ARGV` in this process: (exit status, stdout + stderr)."""
    text = StringIO()
    with redirect_stdout(text), redirect_stderr(text):
        status = main(list(argv))
    return status, text.getvalue()


def investigate(run: Path, *extra: str) -> tuple[int, str]:
    return etrm("investigate", *SELECTION, "--metrics-log", str(run / "metrics.jsonl"), *extra)


def changes_section(out: str) -> list[str]:
    """The lines --baseline prints after the verdict table, up to the gate's line."""
    lines = out[out.index("etrm changes against the baseline") :].splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("etrm baseline gate"))
    return lines[: end + 1]


SEEDS = {"clean": (0, False), "seed1": (1, False), "detached": (0, True)}  # name -> (seed, detached)


class TrainedRuns(dict):
    """name -> run folder, trained and investigated on first use (the verdict JSON beside it as
    `<folder>.json`): the default run trains only the clean and detached runs (about a second each
    after the first's imports); seed1 serves the slow tests."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Path:
        seed, detached = SEEDS[name]
        folder = train(self.root / name, seed=seed, detached=detached)
        status, out = investigate(folder, "--verdict-json", str(self.root / f"{name}.json"))
        assert status == (1 if detached else 0), out
        self[name] = folder
        return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> TrainedRuns:
    return TrainedRuns(tmp_path_factory.mktemp("compare"))


def verdict(runs, name: str) -> Path:
    return runs[name].with_suffix(".json")  # trains the run if it was not yet


def test_a_detached_context_against_the_clean_run_fails_the_gate_with_h2_new_evidence(runs):
    status, out = investigate(runs["detached"], "--baseline", str(verdict(runs, "clean")))
    assert status == 1, out
    section = changes_section(out)
    assert any(
        line.startswith("hypothesis2: new evidence: encoder_norm_preclip_in_log (etrm/suite/test_hypothesis2.py::")
        for line in section
    ), section
    assert "experiment1: worse: C -> B" in section
    assert section[-1].startswith("etrm baseline gate failed: 2 change(s) for the worse (new evidence, worse)")
    # etrm compare flags the same row, and reports rather than gates.
    status, out = etrm("compare", str(verdict(runs, "clean")), str(verdict(runs, "detached")))
    assert status == 0
    assert re.search(r"^hypothesis2 +no evidence: \S+ +evidence found: \S+ \[NEW EVIDENCE\]$", out, re.M), out


def test_the_clean_run_against_itself_flags_nothing(runs):
    status, out = investigate(runs["clean"], "--baseline", str(verdict(runs, "clean")))
    section = changes_section(out)
    assert status == 0 and "no change" in section and section[-1].startswith("etrm baseline gate passed"), out


@pytest.mark.slow
def test_the_clean_run_against_a_rerun_with_another_seed_flags_nothing(runs):
    status, out = investigate(runs["seed1"], "--baseline", str(verdict(runs, "clean")))
    section = changes_section(out)
    assert status == 0 and "no change" in section and section[-1].startswith("etrm baseline gate passed"), out
    status, out = etrm("compare", str(verdict(runs, "clean")), str(verdict(runs, "seed1")), "--labels", "s0,s1")
    assert status == 0 and "[" not in out.split("s1 against s0:")[0], out
    assert "s1 against s0:\n  no change" in out


def test_old_evidence_alone_passes_the_gate(runs):
    """The detached run against itself: its evidence is old, so nothing got worse (exit 0)."""
    status, out = investigate(runs["detached"], "--baseline", str(verdict(runs, "detached")))
    assert status == 0, out
    assert "etrm baseline gate passed: nothing got worse than the baseline; 1 check(s) still fail" in out


def test_four_runs_render_a_table_and_plots_that_read_back(runs, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    jsons = [str(verdict(runs, n)) for n in ("clean", "clean", "detached", "detached")]
    report = tmp_path / "report"
    status, out = etrm("compare", *jsons, "--labels", "main,F1,F2,F2_again", "--report", str(report))
    assert status == 0, out
    md = (report / "compare.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| hypothesis2 |"))  # the grid comes first
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "hypothesis2" and len(cells) == 5
    assert cells[1].startswith("no evidence: ") and cells[2].startswith("no evidence: ")
    assert cells[3].startswith("evidence found: ") and cells[3].endswith("[NEW EVIDENCE]")
    assert cells[4] == cells[3]  # the same run again: the same changes against the baseline
    assert (
        "| experiment1 | C: encoder trains but useless | C: encoder trains but useless | B: encoder stuck [WORSE] "
        "| B: encoder stuck [WORSE] |" in md
    )
    grid = matplotlib.image.imread(report / "verdict_grid.png")[..., :3]
    colours = {tuple(int(round(c * 255)) for c in pixel) for pixel in grid.reshape(-1, 3)[::7]}
    assert (0xF4, 0xA6, 0xA6) in colours and (0xB7, 0xE1, 0xB0) in colours  # evidence red, no-evidence green
    # The experiment1 runs themselves: their scenarios and the overlaid curves.
    status, out = etrm("compare", *(str(runs[n]) for n in ("clean", "detached")), "--report", str(report / "x"))
    assert status == 0, out
    table = out[out.index("experiment1 runs:") :].splitlines()
    assert [line.split()[0] for line in table[2:4]] == ["clean", "detached"]
    assert "B: encoder stuck" in table[3] and "0 (pre-clip)" in table[3] and "C: encoder trains" in table[2]
    curves = matplotlib.image.imread(report / "x" / "experiment1_curves.png")
    assert curves.shape[0] > 300 and curves.shape[1] > 800 and curves[..., :3].std() > 0.05


def test_the_verdict_json_identifies_what_it_investigated(runs, tmp_path):
    """A run that reads a checkpoint records its sha256 and saved model config; and the command."""
    checkpoint = runs["clean"] / "step_final"
    out = tmp_path / "v.json"
    status, text = etrm(
        "investigate", "-m", "hypothesis2", "-k", "checkpoint_encoder_requires_grad", "-n", "0",
        "--etrm-checkpoint", str(checkpoint), "--verdict-json", str(out),
    )  # fmt: skip
    assert status == 0, text
    data = json.loads(out.read_text())
    assert data["version"] == JSON_VERSION == 4
    ident = data["identity"]
    entry = next(a for a in ident["artifacts"] if a["name"] == "etrm_checkpoint" and a["source"] == "user")
    assert entry["path"] == str(checkpoint.resolve())
    assert entry["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert entry["model_config"]["hidden_size"] == 32 and entry["model_config"]["model_type"] == "etrm"
    # The process's command line (its first word depends on how the worker was started: an xdist
    # worker's is execnet's "-c") and the suite's own arguments (etrm investigate's translation).
    assert isinstance(ident["command"], str) and ident["command"].strip()
    assert f"--etrm-etrm-checkpoint {checkpoint.resolve()}" in ident["pytest_args"]
    assert ident["device"] == "cpu" and ident["device_name"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", ident["started"])
    # Against the clean run's log-only baseline: the note on the other artifacts comes first.
    status, text = etrm(
        "investigate", "-m", "hypothesis2", "-k", "checkpoint_encoder_requires_grad", "-n", "0",
        "--etrm-checkpoint", str(runs["detached"] / "step_final"), "--baseline", str(out),
    )  # fmt: skip
    section = changes_section(text)
    assert status == 0 and section[1].startswith("note: other weights or code of the same config: etrm_checkpoint")


def test_a_previous_version_is_read_and_other_versions_or_malformed_json_are_one_line_errors(runs, tmp_path):
    data = json.loads(verdict(runs, "clean").read_text())
    old = tmp_path / "v3.json"  # version 3: the same JSON without the identity block
    old.write_text(json.dumps({k: v for k, v in data.items() if k != "identity"} | {"version": 3}))
    status, out = etrm("compare", str(old), str(verdict(runs, "clean")))
    assert status == 0 and "records no identity (a verdict JSON before version 4)" in out, out
    assert read_verdict_json(old).identity == {}
    older = tmp_path / "v2.json"
    older.write_text(json.dumps(data | {"version": 2}))
    broken = tmp_path / "broken.json"
    broken.write_text(verdict(runs, "clean").read_text()[:-40])
    for path, message in (
        (older, f"{older}: verdict JSON version 2 cannot be read by etrm (it reads versions 3, 4)"),
        (broken, f"{broken}: not valid JSON (line "),
    ):
        with pytest.raises(VerdictJSONError, match=re.escape(message)):
            read_verdict_json(path)
        status, out = etrm("compare", str(path), str(verdict(runs, "clean")))
        assert status == 1 and out.startswith(f"etrm compare: error: {message}") and out.count("\n") == 1, out
        status, out = investigate(runs["clean"], "--baseline", str(path))  # refused before any check runs
        assert status == 2 and out.startswith(f"etrm investigate: error: --baseline {message}"), out
        assert "etrm verdict" not in out and out.count("\n") == 1
    status, out = etrm("compare", str(tmp_path / "missing.json"))
    assert status == 2 and "missing.json: not found" in out


@pytest.mark.slow
def test_checkpoint_level_investigations_gate_the_detached_run_and_pass_another_seed(runs, tmp_path):
    """The same runs investigated as a user would: checkpoint, metrics log and data, every H2 check
    (its decisive number, the checkpoint's smallest encoder gradient norm, included) and experiment1."""
    data = str(fixtures_root() / "data" / "fewshot")

    def full(name: str, *extra: str) -> tuple[int, str]:
        folder = runs[name]
        return etrm(
            "investigate", "-m", "hypothesis2 or experiment1", "-n", "0", "--etrm-checkpoint",
            str(folder / "step_final"), "--metrics-log", str(folder / "metrics.jsonl"), "--data", data, *extra,
        )  # fmt: skip

    baseline = tmp_path / "clean.json"
    status, out = full("clean", "--verdict-json", str(baseline))
    assert status == 0, out
    status, out = full("detached", "--baseline", str(baseline))
    section = changes_section(out)
    assert status == 1 and any(
        line.startswith("hypothesis2: new evidence: encoder_norm_preclip_in_log") for line in section
    )
    status, out = full("seed1", "--baseline", str(baseline))
    section = changes_section(out)
    assert status == 0 and section[-2:] == ["no change", section[-1]], section
    assert section[1].startswith("note: other weights or code of the same config: etrm_checkpoint"), section

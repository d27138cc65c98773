"""`etrm compare` over the interop corpus (fixtures/interop, written by the official TRM and origin
ETRM code): the table must read as /work/shared/interop/EXPECTED.md (fixtures/interop/EXPECTED.md)
says the truth is, and the changes against the first run must be exactly the true findings that
differ between them. Slow: each investigation at the corpus's width takes most of a minute on two
cores (`pytest --runslow`)."""

from __future__ import annotations

import re
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

from etrm.cli import main

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "interop"
TRM = CORPUS / "official" / "trm-bf16" / "step_100"
ORIGIN = (
    "hypothesis1 or hypothesis2 or hypothesis4 or hypothesis5 or hypothesis6",
    "--data",
    str(CORPUS / "origin" / "fewshot"),
)
RUNS = {  # label -> (marker expression, artifacts after --trm-checkpoint)
    "etrm-standard": (ORIGIN[0], "--etrm-checkpoint", str(CORPUS / "origin" / "etrm-standard" / "step_50"), *ORIGIN[1:]),
    "etrm-standard-unfrozen": (
        ORIGIN[0], "--etrm-checkpoint", str(CORPUS / "origin" / "etrm-standard-unfrozen" / "step_50"), *ORIGIN[1:],
    ),
    "etrmtrm-trm-style": (
        ORIGIN[0], "--etrm-checkpoint", str(CORPUS / "origin" / "etrmtrm-trm-style" / "step_50"), *ORIGIN[1:],
    ),
    "official": ("hypothesis1 or hypothesis5 or hypothesis6", "--data", str(CORPUS / "official" / "data")),
}  # fmt: skip
# EXPECTED.md, row by row: "clean" is no evidence, a true finding is evidence found; "–" rows are not asserted.
EXPECTED = {
    "etrm-standard": {"hypothesis1": "no evidence", "hypothesis2": "no evidence", "hypothesis4": "evidence found",
                      "hypothesis5": "no evidence", "hypothesis6": "no evidence"},
    "etrm-standard-unfrozen": {"hypothesis1": "no evidence", "hypothesis2": "no evidence",
                               "hypothesis4": "evidence found", "hypothesis5": "no evidence",
                               "hypothesis6": "no evidence"},
    "etrmtrm-trm-style": {"hypothesis1": "no evidence", "hypothesis5": "no evidence", "hypothesis6": "no evidence"},
    "official": {"hypothesis1": "no evidence", "hypothesis5": "evidence found", "hypothesis6": "no evidence"},
}  # fmt: skip


def etrm(*argv: str) -> tuple[int, str]:
    text = StringIO()
    with redirect_stdout(text), redirect_stderr(text):
        status = main(list(argv))
    return status, text.getvalue()


@pytest.mark.slow
def test_compare_over_the_interop_corpus_reads_as_expected_md(tmp_path):
    jsons = []
    for label, (markers, *artifacts) in RUNS.items():
        out = tmp_path / f"{label}.json"
        etrm(
            "investigate",
            "-m",
            markers,
            "-n",
            "0",
            "--trm-checkpoint",
            str(TRM),
            *artifacts,
            "--verdict-json",
            str(out),
        )
        jsons.append(str(out))
    status, out = etrm("compare", *jsons, "--labels", ",".join(RUNS), "--report", str(tmp_path / "report"))
    assert status == 0, out
    lines = out.splitlines()
    header = lines[0]
    starts = [header.index(label) for label in RUNS]
    for line in lines[1 : lines.index("")]:
        hypothesis = line.split()[0]
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        for label, cell in zip(RUNS, cells):
            expected = EXPECTED[label].get(hypothesis)
            assert not cell.startswith("error"), (label, hypothesis, cell)
            if expected:
                assert cell.startswith(f"{expected}:"), (label, hypothesis, cell)
    # Against etrm-standard: the unfrozen run changes no verdict; the official build brings H5's true
    # finding (the evaluation tasks' demonstrations in its train split) as new evidence.
    unfrozen = out[out.index("etrm-standard-unfrozen against etrm-standard:") :].split("\n\n")[0]
    assert "new evidence" not in unfrozen and "worse" not in unfrozen, unfrozen
    official = out[out.index("official against etrm-standard:") :].split("\n\n")[0]
    assert re.search(r"^  hypothesis5: new evidence: no_evaluation_leakage ", official, re.M), official
    assert "  hypothesis4: verdict: evidence found -> not run" in official
    assert (tmp_path / "report" / "verdict_grid.png").stat().st_size > 10_000

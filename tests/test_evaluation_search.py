"""`etrm evaluate --context-search K` (etrm.evaluation_search): pass@K with the encoder's contexts and
with contexts searched on each test puzzle's demonstrations, scored by one ArcEvaluator each.

Known answers, from how the bundled H7 cases were trained (fixtures/make_h7_cases.py): the
`bottleneck` decoder was trained to read the rule from its context while its encoder was blind
to the demonstrations, so a context searched on them can tell it the rule and exact answers
can appear where the encoder's give none; the `context_blind` decoder never saw a non-zero
context, so no context can raise what it scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from etrm.bundled import fixtures_root
from etrm.checkpoints import load_model
from etrm.cli import main
from etrm.data.datasets import FewShotPuzzleDataset, load_identifiers
from etrm.evaluation import ArcEvaluator, EvaluationError
from etrm.evaluation_search import (
    demo_search_batch,
    evaluate_with_search,
    puzzles_of,
    query_batch,
    query_leaks,
    record_fields,
)
from etrm.inference import evaluate
from etrm.interface import TRMInterface
from etrm.testing.artifacts import BUNDLED

ETRM = fixtures_root() / BUNDLED["etrm_frozen_checkpoint"]
FEWSHOT = fixtures_root() / BUNDLED["data_dir"]
H7 = fixtures_root() / "h7"


@pytest.fixture(scope="module")
def frozen():
    head = load_model(ETRM)
    return head, TRMInterface.from_etrm(head)


@pytest.fixture(scope="module")
def chunk():
    """The first 4 test puzzles of the bundled few-shot build: their queries and search batch."""
    dataset = FewShotPuzzleDataset(FEWSHOT, "test", 1, max_demos=4, test_mode=True)
    names = load_identifiers(FEWSHOT)
    queries, owners = query_batch(dataset, puzzles_of(dataset)[:4])
    found, found_owners = demo_search_batch(queries, owners, 4, names)
    return queries, owners, found, found_owners, names


def test_the_search_batch_is_each_puzzles_demonstrations_and_no_test_query(chunk):
    queries, owners, found, found_owners, names = chunk
    for puzzle in range(4):
        first = int(torch.nonzero(owners == puzzle)[0])
        mask = queries["demo_mask"][first]
        mine = found_owners == puzzle
        assert torch.equal(found["inputs"][mine], queries["demo_inputs"][first][mask])
        assert not any(
            torch.equal(row, q) for row in found["inputs"][mine] for q in queries["inputs"][owners == puzzle]
        )
    assert query_leaks(found, found_owners, queries, owners, names) == []


def _leaking(queries, owners, max_demos, names):
    """Negative control: the demonstrations and, appended, the test queries with their labels."""
    found, found_owners = demo_search_batch(queries, owners, max_demos, names)
    leaked = {k: torch.cat([found[k], queries[k].to(found[k].dtype)]) for k in found}
    return leaked, torch.cat([found_owners, owners])


def test_control_a_search_that_sees_the_test_query_is_caught(chunk, frozen):
    queries, owners, _, _, names = chunk
    leaked, leaked_owners = _leaking(queries, owners, 4, names)
    leaks = query_leaks(leaked, leaked_owners, queries, owners, names)
    assert len(leaks) == len(owners) and "its test query's label is in the search batch" in leaks[0]
    # Only the label: the test label in a demonstration slot's output reaches the encoder.
    slots = {k: v.clone() for k, v in chunk[2].items()}
    first_query = int(torch.nonzero(chunk[3] == 0)[0])
    slots["demo_labels"][first_query, 0] = torch.where(queries["labels"][0] < 0, 0, queries["labels"][0])
    assert query_leaks(slots, chunk[3], queries, owners, names)
    _, model = frozen
    with pytest.raises(EvaluationError, match="would see a test label: puzzle '.*'"):
        evaluate_with_search(model, FEWSHOT, 1, max_demos=4, max_groups=1, progress=False, search_batch=_leaking)


def test_the_encoders_scores_are_those_of_etrm_evaluate(frozen):
    """One run, two evaluators: the encoder side is `etrm evaluate` without the search, per task."""
    head, model = frozen
    searched = evaluate_with_search(model, FEWSHOT, 1, max_demos=4, max_groups=1, puzzles_per_batch=3, progress=False)
    plain = evaluate(
        head,
        FewShotPuzzleDataset(FEWSHOT, "test", 16, max_demos=4, test_mode=True, max_groups=1),
        ArcEvaluator.from_data_dir(FEWSHOT),
        progress=False,
    )
    assert searched.encoder.label_ranks == plain.label_ranks and searched.encoder.metrics == plain.metrics
    assert searched.puzzles == 4 and searched.steps == 1 and searched.searched.denominator == 1
    assert searched.demo_loss[1] < searched.demo_loss[0]  # the one step moved the search
    fields = record_fields(searched)
    assert fields["eval/searched/ARC/pass@1"] == searched.searched.metrics["ARC/pass@1"]
    assert fields["search/steps"] == 1


def test_json_maps_pass_at_k_for_both_contexts(capsys):
    args = ["evaluate", "--checkpoint", str(ETRM), "--data", str(FEWSHOT), "--max-eval-groups", "1"]
    assert main([*args, "--context-search", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["encoder"]) == set(printed["searched"]) >= {"pass@1", "pass@2"}
    assert printed["steps"] == 2 and printed["seconds_per_puzzle"] > 0 and printed["puzzles"] == 4
    assert main([*args, "--context-search", "1"]) == 0
    table = capsys.readouterr().out
    assert "encoder pass@1  encoder pass@2  searched pass@1  searched pass@2" in table and "total" in table


@pytest.mark.parametrize(
    "extra, message",
    [(["--json"], "--json needs --context-search K"), (["--model-code", "x"], "--model-code needs --context-search")],
)
def test_search_flags_without_the_search_are_usage_errors(extra, message, capsys):
    assert main(["evaluate", "--checkpoint", str(ETRM), "--data", str(FEWSHOT), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_trm_has_no_context_to_search(capsys):
    trm = fixtures_root() / BUNDLED["trm_checkpoint"]
    trm_data = fixtures_root() / BUNDLED["trm_data_dir"]
    assert main(["evaluate", "--checkpoint", str(trm), "--data", str(trm_data), "--context-search", "1"]) == 2
    assert "a TRM has no demonstration encoder" in capsys.readouterr().err


# --- known answers, trained (slow: 16 puzzles x 32 steps each) ------------------------------


def _h7_case(name: str, *, demo_blind: bool, zero_encoder: bool = False):
    from etrm.suite.broken import DemoBlindEncoder, with_encoder

    head = load_model(H7 / name / "step_final")
    if demo_blind:  # trained through this wrapper, saved without it (etrm.suite.h7_case.known_case)
        head = with_encoder(head, DemoBlindEncoder)
    if zero_encoder:  # a collapsed encoder: one constant context, the search's start at a fixed point
        with torch.no_grad():
            for p in head.model.encoder.parameters():
                p.zero_()
    model = TRMInterface.from_etrm(head)
    return evaluate_with_search(model, H7 / "data" / "fewshot", 32, max_demos=head.config.max_demos, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("zero_encoder", [False, True], ids=["demo-blind encoder", "zeroed encoder"])
def test_the_search_raises_exact_matches_where_the_encoder_is_the_bottleneck(zero_encoder):
    found = _h7_case("bottleneck", demo_blind=True, zero_encoder=zero_encoder)
    assert found.exact_rows[1] > found.exact_rows[0], found.table()
    assert found.searched.metrics["ARC/pass@2"] > found.encoder.metrics["ARC/pass@2"], found.table()


@pytest.mark.slow
def test_the_search_cannot_raise_a_decoder_that_ignores_its_context():
    found = _h7_case("context_blind", demo_blind=False)
    assert found.exact_rows[1] <= found.exact_rows[0], found.table()
    for k in (1, 2):
        assert found.searched.metrics[f"ARC/pass@{k}"] <= found.encoder.metrics[f"ARC/pass@{k}"], found.table()


@pytest.mark.slow
def test_experiment1_logs_the_searched_pass_at_k_beside_each_evaluation(tmp_path):
    from etrm.metrics_log import read_metrics_log

    trm = fixtures_root() / BUNDLED["trm_checkpoint"]
    args = ["experiment1", "--trm-checkpoint", str(trm), "--data", str(FEWSHOT), "--out", str(tmp_path)]
    args += ["--steps", "4", "--batch-size", "2", "--eval-every", "2", "--max-eval-groups", "1"]
    assert main([*args, "--eval-context-search", "2"]) == 0
    evals = [r for r in read_metrics_log(tmp_path / "metrics.jsonl") if "eval/ARC/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    for record in evals:
        assert {"eval/searched/ARC/pass@1", "eval/searched/ARC/pass@2", "search/steps"} <= set(record)
        assert record["search/steps"] == 2 and record["search/puzzles"] == 4


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_totals_of_one_process(tmp_path):
    args = ["evaluate", "--checkpoint", str(ETRM), "--data", str(FEWSHOT), "--context-search", "4", "--json"]
    args += ["--search-batch", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "etrm", *args], capture_output=True, text=True, env=env, timeout=600)
    port = str(29500 + (os.getpid() + 7) % 400)
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port, "-m", "etrm"]
    two = subprocess.run([*run, *args], capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["world_size"] == 2 and a["world_size"] == 1
    for key in ("encoder", "searched", "per_task", "puzzles", "exact_rows_encoder", "exact_rows_searched"):
        assert a[key] == b[key], key
    assert a["demo_loss_searched"] == pytest.approx(b["demo_loss_searched"], rel=1e-6)

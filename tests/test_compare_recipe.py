"""The CI recipe of docs/compare.md, as written there, on tests/foreign_repo: main's run keeps its
verdict JSON, and a pull request is gated on it with --baseline.

The repository holds the correct model only (config/arch/etrm.yaml, the origin's own file). Why
each answer is true: a pull request that adds `context = context.detach()` after the encoder in
models/recursive_reasoning/etrm.py cuts every encoder gradient (the bug of the origin's
etrm_detached_context variant, written into the model file itself as a PR would), so H2's
encoder_gradient_every_step fails where main's passed: new evidence, exit 1. A pull request that
changes nothing gives the same verdict: exit 0.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from etrm import cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "compare.md"
FOREIGN = Path(__file__).resolve().parent / "foreign_repo"
MODEL_FILE = Path("models") / "recursive_reasoning" / "etrm.py"
ENCODE_LINE = "context, extra, encoder_state = self.encode(carry, data, needs_reset)"


def recipe_commands() -> dict[str, list[str]]:
    """main's and the pull request's `etrm investigate` lines of the workflow in docs/compare.md."""
    lines = re.findall(r"^\s*run: (etrm investigate .*)$", DOCS.read_text(), re.M)
    assert len(lines) == 2, lines
    main, pull_request = (shlex.split(line) for line in lines)
    assert "--verdict-json" in main and "--baseline" not in main
    assert "--baseline" in pull_request
    return {"main": main, "pull_request": pull_request}


def repository(root: Path, detach_context: bool = False) -> Path:
    """A researcher's repository with the correct model; optionally the PR that detaches the context."""
    shutil.copytree(FOREIGN / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "config" / "arch").mkdir(parents=True)
    shutil.copy(FOREIGN / "config" / "arch" / "etrm.yaml", root / "config" / "arch")
    if detach_context:
        code = (root / MODEL_FILE).read_text()
        indent = re.search(rf"^( *){re.escape(ENCODE_LINE)}$", code, re.M).group(1)
        assert code.count(ENCODE_LINE) == 1
        (root / MODEL_FILE).write_text(code.replace(ENCODE_LINE, f"{ENCODE_LINE}\n{indent}context = context.detach()"))
    return root


def run_in(repo: Path, argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    assert argv[:2] == ["etrm", "investigate"]
    monkeypatch.chdir(repo)
    status = cli.main(argv[1:])
    return status, capsys.readouterr().out


@pytest.fixture(scope="module")
def main_verdict(tmp_path_factory) -> Path:
    """main's run of the recipe: its verdict JSON, the artifact a pull request downloads."""
    repo = repository(tmp_path_factory.mktemp("main") / "repo")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(repo)
        status = cli.main(recipe_commands()["main"][1:])
    assert status == 0
    return repo / "etrm-verdict.json"


def pull_request(tmp_path: Path, main_verdict: Path, detach_context: bool) -> Path:
    repo = repository(tmp_path / "repo", detach_context)
    (repo / "baseline").mkdir()
    shutil.copy(main_verdict, repo / "baseline" / "etrm-verdict.json")  # what `gh run download` does
    return repo


def test_a_pull_request_that_detaches_the_context_fails_with_h2_new_evidence(
    main_verdict, tmp_path, capsys, monkeypatch
):
    repo = pull_request(tmp_path, main_verdict, detach_context=True)
    status, out = run_in(repo, recipe_commands()["pull_request"], capsys, monkeypatch)
    assert status == 1, out
    section = out[out.index("etrm changes against the baseline") :].splitlines()
    assert section[1].startswith("note: other weights or code of the same config: model_code"), section
    assert any(line.startswith("hypothesis2: new evidence: encoder_gradient_every_step") for line in section), section
    assert any(line.startswith("etrm baseline gate failed") for line in section)
    assert (repo / "etrm-verdict.json").is_file()  # the PR's own verdict, for the next comparison


@pytest.mark.slow
def test_a_pull_request_that_changes_nothing_passes(main_verdict, tmp_path, capsys, monkeypatch):
    repo = pull_request(tmp_path, main_verdict, detach_context=False)
    status, out = run_in(repo, recipe_commands()["pull_request"], capsys, monkeypatch)
    assert status == 0, out
    section = out[out.index("etrm changes against the baseline") :].splitlines()
    assert "no change" in section and any(line.startswith("etrm baseline gate passed") for line in section), section


def test_the_docs_recipe_keeps_mains_verdict_and_gates_the_pull_request_on_it():
    """Cheap: the two commands are the model-code gate of docs/model-code.md plus the verdict and the
    baseline the workflow's upload and download steps name."""
    commands = recipe_commands()
    text = DOCS.read_text()
    main, pr = commands["main"], commands["pull_request"]
    assert main[main.index("--verdict-json") + 1] == "etrm-verdict.json"
    assert "path: etrm-verdict.json" in text and "--name etrm-verdict --dir baseline" in text
    assert pr[pr.index("--baseline") + 1] == "baseline/etrm-verdict.json"
    assert main[: main.index("--verdict-json")] == pr[: pr.index("--baseline")]
    assert "--model-code" in main and main[main.index("--model-code") + 1] == "."

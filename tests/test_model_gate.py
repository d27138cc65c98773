"""The researcher's model code as a CI gate without checkpoints: the documented CI command
(docs/model-code.md, and the README's copy), as written there, on tests/foreign_repo (configs laid out like the origin's config/arch/), and the
config reading and CI sizing behind it (etrm.config.arch, etrm.model_code.build_model_at_size)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from etrm import cli
from etrm.bundled import fixtures_root
from etrm.config import tiny_config
from etrm.config.arch import ARCH, ETRM, TRAINER, ConfigError, at_size, config_files, read_arch_config
from etrm.model_code import ModelCodeError, build_model_at_size
from etrm.testing.artifacts import BUNDLED, ArtifactError, Artifacts

README = Path(__file__).resolve().parent.parent / "README.md"
GATE_DOCS = README.parent / "docs" / "model-code.md"  # the workflow and tox recipes
FOREIGN = Path(__file__).resolve().parent / "foreign_repo"
ARCH_DIR = FOREIGN / "config" / "arch"
DATA = fixtures_root() / BUNDLED["data_dir"]
STRUCTURE = (
    "H_cycles",
    "L_cycles",
    "halt_max_steps",
    "halt_exploration_prob",
    "puzzle_emb_len",
    "forward_dtype",
    "encoder_type",
    "encoder_pooling_method",
    "encoder_norm_style",
    "encoder_h_cycles",
    "encoder_l_cycles",
    "recurrent_encoder_type",
    "freeze_encoder",
    "pos_encodings",
    "expansion",
    "loss",
    "name",
)

# config file -> the checks that must fail on it (the correct model: none).
EXPECTED_FAILURES = {
    "etrm.yaml": set(),
    "etrmtrm.yaml": {"encoder_gradient_every_step"},  # the origin's detached recurrent carry
    "etrm_detached_context.yaml": {"encoder_gradient_every_step"},
    "etrm_cached_context.yaml": {"encoder_gradient_every_step"},
    "etrm_frozen_encoder.yaml": {"encoder_requires_grad", "encoder_gradient_every_step"},
    "etrm_demo_slot_positions.yaml": {"demo_order_invariance"},
    "trm.yaml": set(),  # no encoder: the encoder checks do not apply
}
MODEL_CODE_TESTS = 8  # tests per case in etrm/suite/test_model_code.py
MODEL_CODE_CONTROLS = 2  # its negative controls, which run once


def readme_commands() -> dict[str, str]:
    """The gate command of the documented GitHub Actions workflow and of its tox environment."""
    text = GATE_DOCS.read_text()
    workflow = re.findall(r"^\s*- run: (etrm investigate .*)$", text, re.M)
    tox = re.findall(r"^commands = (etrm investigate .*)$", text, re.M)
    assert len(workflow) == 1 and len(tox) == 1, (workflow, tox)
    return {"workflow": workflow[0], "tox": tox[0]}


def run_gate(cwd: Path, capsys, monkeypatch, *extra: str) -> tuple[int, str]:
    """The README's command, in `cwd`, through the `etrm` entry point (etrm.cli.main)."""
    argv = shlex.split(readme_commands()["workflow"])
    assert argv[:2] == ["etrm", "investigate"]
    monkeypatch.chdir(cwd)
    status = cli.main(argv[1:] + list(extra))
    return status, capsys.readouterr().out


def test_the_readme_gives_one_gate_command_for_github_actions_and_tox():
    commands = readme_commands()
    assert commands["workflow"] == commands["tox"]
    assert "--model-code . --model-config config/arch/" in commands["workflow"]
    # The README shows the same command, with the workflow's one thread.
    assert f"OMP_NUM_THREADS=1 {commands['workflow']}\n" in README.read_text()


def test_the_gate_fails_each_broken_variant_naming_its_check_and_passes_the_correct_model(
    capsys, monkeypatch, tmp_path
):
    """The README command on tests/foreign_repo's config/arch/: one case per file. (The verdict
    JSON, an output option, is added to read each test's outcome; the output names the checks.)"""
    verdict = tmp_path / "verdict.json"
    status, out = run_gate(FOREIGN, capsys, monkeypatch, "--verdict-json", str(verdict))
    assert status == 1, out
    tests = [
        t for t in json.loads(verdict.read_text())["tests"] if "test_model_code.py::test_model_code_" in t["nodeid"]
    ]
    by_case: dict[str, list[dict]] = {}
    for test in tests:
        by_case.setdefault(re.search(r"\[(.+)\]$", test["nodeid"]).group(1), []).append(test)
    assert sorted(by_case) == sorted(EXPECTED_FAILURES) and {len(v) for v in by_case.values()} == {MODEL_CODE_TESTS}
    for case, expected in EXPECTED_FAILURES.items():
        failed = {c["name"] for t in by_case[case] for c in t["checks"] if c["status"] == "fail"}
        assert failed == expected, (case, failed)
        kinds = {t["nodeid"].split("::")[1].split("[")[0]: t["outcome"] for t in by_case[case]}
        if case == "trm.yaml":
            assert kinds.pop("test_model_code_training_steps_finite_at_forward_dtype") == "passed"
            assert set(kinds.values()) == {"skipped"}
            assert all(
                "not applicable to the encoder checks" in t["reason"]
                for t in by_case[case]
                if t["outcome"] == "skipped"
            )
        else:
            assert "skipped" not in kinds.values() and "error" not in kinds.values(), (case, kinds)
        for check in expected:  # named in the output, under the failing test's own header
            assert re.search(rf"_ test_model_code_\w+\[{re.escape(case)}\] _+\n{check}: ", out), (case, check)
    assert "error" not in {t["outcome"] for t in tests}


@pytest.mark.slow
def test_the_gate_passes_the_correct_model_alone(capsys, monkeypatch, tmp_path):
    """The README command on a repository holding only the correct model exits 0. Slow: the
    default run's test_the_gate_fails_each_broken_variant_naming_its_check_and_passes_the_correct_model
    already runs etrm.yaml through the same command and asserts it fails no check and errors and
    skips nothing, and test_plugin_investigate's runs hold the exit status to the verdict."""
    repo = tmp_path / "repo"
    shutil.copytree(FOREIGN / "models", repo / "models")
    (repo / "config" / "arch").mkdir(parents=True)
    shutil.copy(ARCH_DIR / "etrm.yaml", repo / "config" / "arch")
    status, out = run_gate(repo, capsys, monkeypatch)
    assert status == 0, out
    assert f" {MODEL_CODE_TESTS + MODEL_CODE_CONTROLS} passed" in out and "etrm gate failed" not in out
    for row in ("hypothesis2", "hypothesis3", "hypothesis7"):
        assert re.search(rf"^{row} +no evidence +", out, re.M), out


def test_a_run_that_checked_none_of_the_users_model_fails_in_one_line_unless_allowed(capsys, monkeypatch):
    """--model-code without --model-config or a checkpoint: every check that would use it is not run."""
    argv = ["investigate", "-m", "hypothesis2", "-k", "model_code", "-n", "0", "--model-code", str(FOREIGN)]
    assert cli.main(argv) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "etrm gate failed" in line]
    assert lines == [
        "etrm gate failed: no check that ran read --model-code (the checks that would use it were not "
        "run or not selected: see the 'not run' reasons above); pass --allow-unchecked to let such a run "
        "pass"
    ]
    assert cli.main(argv + ["--allow-unchecked"]) == 0
    assert "etrm gate failed" not in capsys.readouterr().out


# --- reading configs and sizing them ------------------------------------------------------


def test_config_kinds_are_told_apart_and_an_unknown_file_is_an_error_naming_it(tmp_path):
    assert read_arch_config(ARCH_DIR / "etrmtrm.yaml").kind == ARCH
    trainer = tmp_path / "all_config.yaml"
    trainer.write_text(
        yaml.safe_dump(
            {
                "arch": yaml.safe_load((ARCH_DIR / "etrm.yaml").read_text()),
                "global_batch_size": 384,
                "max_demos": 6,
                "lr": 1e-4,
            }
        )
    )
    read = read_arch_config(trainer)
    assert (read.kind, read.name, read.max_demos) == (TRAINER, "recursive_reasoning.etrm@TRMWithEncoder", 6)
    ours = tmp_path / "model.yaml"
    ours.write_text(tiny_config("etrm").to_yaml())
    assert read_arch_config(ours).kind == ETRM
    (tmp_path / "other.yaml").write_text("lr: 1.0\n")
    with pytest.raises(ConfigError, match="other.yaml: neither a config/arch file"):
        read_arch_config(tmp_path / "other.yaml")
    assert [p.name for p in config_files(ARCH_DIR)] == sorted(EXPECTED_FAILURES)
    assert config_files(ARCH_DIR / "etrm.yaml") == [ARCH_DIR / "etrm.yaml"]


def test_the_ci_size_shrinks_width_layers_canvas_and_demos_and_keeps_the_structure():
    config = read_arch_config(ARCH_DIR / "etrmtrm.yaml")
    tiny, mid, full = (at_size(config, size) for size in ("tiny", "mid", "as-configured"))
    assert {
        k: tiny.arch[k]
        for k in (
            "hidden_size",
            "num_heads",
            "L_layers",
            "encoder_num_layers",
            "encoder_set_layers",
            "encoder_l_layers",
            "H_layers",
        )
    } == dict(
        hidden_size=32,
        num_heads=2,
        L_layers=1,
        encoder_num_layers=1,
        encoder_set_layers=1,
        encoder_l_layers=1,
        H_layers=0,
    )
    assert (tiny.canvas, tiny.max_demos, mid.canvas, mid.max_demos) == (10, 4, 30, 6)
    assert (mid.arch["hidden_size"], mid.arch["num_heads"], mid.arch["L_layers"]) == (128, 4, 2)
    assert tiny.shrunk["hidden_size"] == (512, 32) and tiny.shrunk["max_demos"] == (10, 4)
    for key in STRUCTURE:
        if key in config.arch:
            assert tiny.arch[key] == mid.arch[key] == config.arch[key], key
    assert (full.arch, full.canvas, full.max_demos, full.shrunk) == (config.arch, 30, 10, {})
    trm = read_arch_config(ARCH_DIR / "trm.yaml")  # puzzle_emb_ndim: ${.hidden_size} follows the shrink
    assert (
        at_size(trm, "tiny").arch["puzzle_emb_ndim"] == 32
        and at_size(trm, "as-configured").arch["puzzle_emb_ndim"] == 512
    )
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        at_size(config, "huge")


def test_a_trainer_config_builds_the_same_model_as_its_arch_file(tmp_path):
    arch_file = read_arch_config(ARCH_DIR / "etrm.yaml")
    trainer = tmp_path / "all_config.yaml"
    trainer.write_text(yaml.safe_dump({"arch": arch_file.arch, "global_batch_size": 384, "max_demos": 10}))
    built = [
        build_model_at_size(FOREIGN, c, at_size(c, "tiny"), DATA, batch_size=8)
        for c in (arch_file, read_arch_config(trainer))
    ]
    assert built[0].config == built[1].config and built[0].max_demos == built[1].max_demos == 4
    assert built[0].config["hidden_size"] == 32 and built[0].config["batch_size"] == 8
    first, second = (b.model.head.state_dict() for b in built)
    assert all((first[k] == second[k]).all() for k in first)  # the same seeded initialisation
    with pytest.raises(ModelCodeError, match="an etrm ModelConfig names no model class of yours"):
        ours = tmp_path / "model.yaml"
        ours.write_text(tiny_config("etrm").to_yaml())
        build_model_at_size(
            FOREIGN, read_arch_config(ours), at_size(read_arch_config(ours), "tiny"), DATA, batch_size=8
        )


def test_model_config_options_are_checked_when_the_run_starts(tmp_path):
    with pytest.raises(
        ArtifactError, match="--etrm-model-config .*: no \\*.yaml or \\*.yml config file in this folder"
    ):
        Artifacts.resolve({"model_config": tmp_path})
    with pytest.raises(ArtifactError, match="--model-size 'huge': choose one of tiny, mid, as-configured"):
        Artifacts.resolve({}, model_size="huge", prefix="")
    with pytest.raises(ArtifactError, match="--etrm-encoder-module 'a.b': not a submodule name"):
        Artifacts.resolve({}, encoder_module="a.b")
    assert Artifacts.resolve({"model_config": ARCH_DIR}).model_config_files == config_files(ARCH_DIR)

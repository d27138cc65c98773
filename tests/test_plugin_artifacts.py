"""Artifact resolution: user paths win, bundled fixtures are the default, absent ones skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from etrm.testing.artifacts import BUNDLED, OPTIONS, ArtifactError, Artifacts, fixtures_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fixtures folder holding the bundled TRM checkpoint and few-shot data only."""
    root = tmp_path / "fixtures"
    (root / BUNDLED["trm_checkpoint"]).parent.mkdir(parents=True)
    (root / BUNDLED["trm_checkpoint"]).write_bytes(b"ckpt")
    (root / BUNDLED["data_dir"]).mkdir(parents=True)
    return root


def test_bundled_paths_exist_or_resolve_to_none(root):
    art = Artifacts.resolve({}, root=root)
    assert art.trm_checkpoint == root / "checkpoints/trm/step_final"
    assert art.data_dir == root / "data/fewshot"
    assert art.source("trm_checkpoint") == "bundled"
    assert art.etrm_checkpoint is None and art.source("etrm_checkpoint") == "absent"
    assert art.model_config is None and art.device == "cpu"


def test_user_paths_win_over_bundled(root, tmp_path):
    mine = tmp_path / "my_step_100"
    mine.write_bytes(b"x")
    art = Artifacts.resolve({"trm_checkpoint": mine, "data_dir": tmp_path}, root=root)
    assert art.trm_checkpoint == mine.resolve() and art.source("trm_checkpoint") == "user"
    assert art.data_dir == tmp_path.resolve() and art.source("data_dir") == "user"


@pytest.mark.parametrize(
    "given, match",
    [
        (
            {"trm_checkpoint": "/nonexistent/step_1"},
            "--etrm-trm-checkpoint /nonexistent/step_1: TRM checkpoint file not found",
        ),
        ({"etrm_frozen_checkpoint": "/x"}, "etrm_frozen_checkpoint is bundled only"),
        ({"weights": "/x"}, r"unknown artifact\(s\) \['weights'\]"),
    ],
)
def test_bad_user_input_is_an_error_naming_the_option(root, given, match):
    with pytest.raises(ArtifactError, match=match):
        Artifacts.resolve(given, root=root)


def test_a_file_given_as_data_dir_is_an_error(root, tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(ArtifactError, match="--etrm-data .*: built dataset directory not found"):
        Artifacts.resolve({"data_dir": tmp_path / "f"}, root=root)


def test_unknown_device_is_an_error(root):
    with pytest.raises(ArtifactError, match="--etrm-device 'tpu'"):
        Artifacts.resolve({}, device="tpu", root=root)


def test_require_returns_path_or_skips_naming_the_option(root):
    art = Artifacts.resolve({}, root=root)
    assert art.require("trm_checkpoint") == root / BUNDLED["trm_checkpoint"]
    with pytest.raises(pytest.skip.Exception, match="no ETRM checkpoint: pass --etrm-etrm-checkpoint PATH"):
        art.require("etrm_checkpoint")
    with pytest.raises(pytest.skip.Exception, match="no model config: pass --etrm-model-config PATH"):
        art.require("model_config")
    with pytest.raises(pytest.skip.Exception, match="fixtures/checkpoints/etrm_frozen/step_final is missing"):
        art.require("etrm_frozen_checkpoint")
    with pytest.raises(KeyError, match="unknown artifact 'trm'"):
        art.require("trm")


def test_require_matching_refuses_to_pair_user_and_bundled_artifacts(root, tmp_path):
    (root / BUNDLED["etrm_frozen_checkpoint"]).parent.mkdir(parents=True)
    (root / BUNDLED["etrm_frozen_checkpoint"]).write_bytes(b"e")
    mine = tmp_path / "etrm_step_5"
    mine.write_bytes(b"e")
    bundled = Artifacts.resolve({}, root=root)
    assert bundled.require_matching("trm_checkpoint", "etrm_frozen_checkpoint") == (
        root / BUNDLED["trm_checkpoint"],
        root / BUNDLED["etrm_frozen_checkpoint"],
    )

    mixed = Artifacts.resolve({"etrm_checkpoint": mine}, root=root)
    with pytest.raises(
        pytest.skip.Exception,
        match="--etrm-etrm-checkpoint is yours and trm_checkpoint is bundled: pass --etrm-trm-checkpoint PATH too",
    ):
        mixed.require_matching("trm_checkpoint", "etrm_checkpoint")
    user_trm = Artifacts.resolve({"trm_checkpoint": mine}, root=root)
    with pytest.raises(pytest.skip.Exception, match="runs on the bundled fixtures only"):
        user_trm.require_matching("trm_checkpoint", "etrm_frozen_checkpoint")


def test_a_log_of_the_run_is_never_the_bundled_one_beside_users_checkpoints(root, tmp_path):
    (root / BUNDLED["metrics_log"]).parent.mkdir(parents=True)
    (root / BUNDLED["metrics_log"]).write_text("{}\n")
    mine = tmp_path / "step_5"
    mine.write_bytes(b"e")
    log = tmp_path / "metrics.jsonl"
    log.write_text("{}\n")
    run = ("trm_checkpoint", "etrm_checkpoint")
    assert Artifacts.resolve({}, root=root).require_of_run("metrics_log", *run) == root / BUNDLED["metrics_log"]
    with pytest.raises(
        pytest.skip.Exception,
        match="^not run: needs --etrm-metrics-log PATH: --etrm-etrm-checkpoint "
        "is yours, and the bundled metrics log is not of your run$",
    ):
        Artifacts.resolve({"etrm_checkpoint": mine}, root=root).require_of_run("metrics_log", *run)
    # The user's log is checked on its own, beside bundled (or their own) checkpoints.
    assert Artifacts.resolve({"metrics_log": log}, root=root).require_of_run("metrics_log", *run) == log.resolve()
    both = Artifacts.resolve({"metrics_log": log, "trm_checkpoint": mine}, root=root)
    assert both.require_of_run("metrics_log", *run) == log.resolve()


def test_every_bundled_artifact_and_option_is_documented():
    import etrm.testing.artifacts as module

    assert set(BUNDLED) <= set(OPTIONS)
    assert all(path in module.__doc__ for path in BUNDLED.values())
    assert fixtures_root().name == "fixtures" and (fixtures_root() / "__init__.py").is_file()


def test_fixtures_root_falls_back_to_the_checkout_when_etrm_is_not_installed(monkeypatch):
    import etrm.bundled as bundled

    def not_installed(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(bundled.importlib.resources, "files", not_installed)
    assert bundled.fixtures_root() == Path(bundled.__file__).resolve().parent.parent / "fixtures"
    monkeypatch.setattr(bundled, "__file__", "/nowhere/etrm/bundled.py")
    with pytest.raises(ModuleNotFoundError, match="pip install -e"):
        bundled.fixtures_root()

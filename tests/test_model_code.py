"""A researcher's own model code behind the adapter (`--model-code`): loading it the way the
official and origin trainers build a model, and the checks catching each bug of the
foreign-style repository in tests/foreign_repo, directly and through `etrm investigate`."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from etrm import investigate
from etrm.bundled import fixtures_root
from etrm.checkpoints import normalize_key, read_state_dict
from etrm.checks import h1_decoder_loading as h1
from etrm.checks import h2_gradient_flow as h2
from etrm.checks import h3_encoder_output as h3
from etrm.checks import h7_encoder_capacity as h7
from etrm.data.datasets import FewShotPuzzleDataset, load_identifiers
from etrm.model_code import ModelCodeError, build_model_code, load_model_code
from etrm.testing.artifacts import BUNDLED

FOREIGN = Path(__file__).resolve().parent / "foreign_repo"
DATA = fixtures_root() / BUNDLED["data_dir"]
TRM = fixtures_root() / BUNDLED["trm_checkpoint"]
# An origin-style all_config.yaml (arch.name, arch.loss, encoder keys, freeze_decoder_steps) that
# etrm's importer reads too, at the tiny size the bundled TRM and data were made with.
BASE_CONFIG = fixtures_root() / "checkpoints" / "etrm_frozen" / "all_config.yaml"
ETRM_CLASS = "recursive_reasoning.etrm@TRMWithEncoder"

# variant -> (arch.name, extra arch keys, the hypotheses whose checks run, the checks that must find it)
VARIANTS = {
    "correct": (ETRM_CLASS, {}, ("hypothesis1", "hypothesis2", "hypothesis3", "hypothesis7"), set()),
    "detached-context": (
        "recursive_reasoning.etrm_variants@DetachedContextTRM",
        {},
        ("hypothesis2",),
        {"encoder_gradient_every_step"},
    ),
    "cached-context": (
        "recursive_reasoning.etrm_variants@CachedContextTRM",
        {},
        ("hypothesis2",),
        {"encoder_gradient_every_step"},
    ),
    "demo-slot-positions": (
        "recursive_reasoning.etrm_variants@DemoSlotPositionTRM",
        {},
        ("hypothesis3",),
        {"demo_order_invariance"},
    ),
    "frozen-encoder": (
        ETRM_CLASS,
        {"freeze_encoder": True},
        ("hypothesis2",),
        {"encoder_requires_grad", "encoder_gradient_every_step"},
    ),
    "origin-etrmtrm": (
        "recursive_reasoning.etrmtrm@TRMWithRecurrentEncoder",
        {},
        ("hypothesis2",),
        {"encoder_gradient_every_step"},
    ),
}


def write_run(folder: Path, arch_name: str, prefix: str = "_orig_mod.", **arch) -> Path:
    """A tiny run of the foreign code: all_config.yaml and step_150, the decoder copied from the
    bundled TRM (as the origin's load_pretrained_decoder does) and, by the config, kept frozen."""
    saved = yaml.safe_load(BASE_CONFIG.read_text())
    saved["arch"].update(name=arch_name, **arch)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all_config.yaml").write_text(yaml.safe_dump(saved))
    torch.manual_seed(0)
    head = build_model_code(FOREIGN, folder / "all_config.yaml", DATA).model.head
    trm = {normalize_key(k): v for k, v in read_state_dict(TRM).items()}
    path = folder / "step_150"
    torch.save({prefix + k: trm.get(k, v) for k, v in head.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("foreign_runs")
    return {name: write_run(root / name, arch_name, **extra) for name, (arch_name, extra, *_) in VARIANTS.items()}


def _batch(code, size: int) -> dict[str, torch.Tensor]:
    return FewShotPuzzleDataset(DATA, "test", size, max_demos=code.max_demos, test_mode=True).first_batch()


def test_the_model_is_built_from_the_saved_config_as_the_trainers_build_it(runs):
    code = load_model_code(FOREIGN, runs["correct"], DATA)
    assert code.config["batch_size"] == code.saved["global_batch_size"] and code.config["causal"] is False
    assert (code.config["seq_len"], code.config["vocab_size"], code.config["num_puzzle_identifiers"]) == (100, 12, 49)
    assert "name" not in code.config and "loss" not in code.config
    head = code.model.head
    assert type(head).__module__ == "models.losses" and Path(sys.modules["models"].__file__).is_relative_to(FOREIGN)
    assert (head.kl_weight, head.loss_fn.__name__) == (0.0, "stablemax_cross_entropy")  # the other arch.loss keys
    assert code.model.encoder is head.model.encoder and not code.model.is_etrm
    assert (code.model.halt_max_steps, code.model.puzzle_emb_len, code.model.forward_dtype) == (3, 4, "float32")


def test_every_key_layout_loads_and_any_key_mismatch_is_an_error_naming_it(runs, tmp_path):
    for prefix in ("", "module.", "module._orig_mod."):
        path = write_run(tmp_path / (prefix or "plain"), ETRM_CLASS, prefix=prefix)
        loaded = load_model_code(FOREIGN, path, DATA).model.head.state_dict()
        assert all(torch.equal(v, loaded[normalize_key(k)]) for k, v in torch.load(path, weights_only=True).items())
    state = torch.load(runs["correct"], weights_only=True)
    cases = {
        "missing 1: model.inner.lm_head.weight": {k: v for k, v in state.items() if not k.endswith("lm_head.weight")},
        "unexpected 1: model.encoder.extra": {**state, "_orig_mod.model.encoder.extra": torch.zeros(1)},
        "shape mismatch 1: model.inner.q_head.bias": {**state, "_orig_mod.model.inner.q_head.bias": torch.zeros(3)},
    }
    for message, broken_state in cases.items():
        path = tmp_path / "bad" / "step_1"
        path.parent.mkdir(exist_ok=True)
        (path.parent / "all_config.yaml").write_text((runs["correct"].parent / "all_config.yaml").read_text())
        torch.save(broken_state, path)
        with pytest.raises(ModelCodeError, match=f"step_1 does not fit TRMWithEncoder .*: {message}"):
            load_model_code(FOREIGN, path, DATA)


@pytest.mark.parametrize(
    "arch_name, error",
    [
        ("recursive_reasoning.etrm", r"arch.name 'recursive_reasoning.etrm' is not 'module@Class'"),
        (
            "recursive_reasoning.nope@X",
            r"importing models.recursive_reasoning.nope from .* failed: ModuleNotFoundError",
        ),
        ("recursive_reasoning.etrm@Nope", r"models.recursive_reasoning.etrm \(.*etrm.py\) has no class Nope"),
    ],
)
def test_an_unresolvable_model_class_is_an_error_naming_it(arch_name, error, tmp_path):
    saved = yaml.safe_load(BASE_CONFIG.read_text())
    saved["arch"]["name"] = arch_name
    (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ModelCodeError, match=error):
        build_model_code(FOREIGN, tmp_path / "all_config.yaml", DATA)


def test_unusable_roots_and_configs_are_errors_naming_them(tmp_path):
    with pytest.raises(ModelCodeError, match=f"model code root {tmp_path}: no models/ folder"):
        build_model_code(tmp_path, BASE_CONFIG, DATA)
    with pytest.raises(ModelCodeError, match="all_config.yaml: training config not found"):
        build_model_code(FOREIGN, tmp_path / "all_config.yaml", DATA)
    saved = yaml.safe_load(BASE_CONFIG.read_text())
    saved["arch"]["seq_len"] = 100
    (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ModelCodeError, match=r"arch sets \['seq_len'\], which the trainer derives from the dataset"):
        build_model_code(FOREIGN, tmp_path / "all_config.yaml", DATA)


def test_a_models_package_imported_from_elsewhere_does_not_shadow_the_root(runs, monkeypatch):
    impostor = types.ModuleType("models")
    impostor.__file__ = "/elsewhere/models/__init__.py"
    monkeypatch.setitem(sys.modules, "models", impostor)
    head = load_model_code(FOREIGN, runs["correct"], DATA).model.head
    assert Path(sys.modules[type(head).__module__].__file__).is_relative_to(FOREIGN)


def _checks(hypothesis: str, model, run: Path, code) -> list:
    if hypothesis == "hypothesis1":
        return [h1.check_model_decoder_matches_trm(model, TRM, h1.decoder_frozen_in_run(run))]
    batch = _batch(code, 4)
    if hypothesis == "hypothesis2":
        return [
            h2.check_encoder_requires_grad(model),
            h2.check_encoder_gradient_every_step(model, batch),
            h2.check_loss_responds_to_encoder(model, batch),
        ]
    if hypothesis == "hypothesis3":
        return [
            h3.check_context_shape_and_dtype(model, batch),
            h3.check_context_finite(model, batch),
            h3.check_demo_order_invariance(model, batch),
            h3.check_padding_invariance(model, batch),
        ]
    wide = _batch(code, 16)
    tasks = h7.task_ids_of(wide, load_identifiers(DATA))
    return [
        h7.check_context_varies_across_tasks(model, wide, tasks),
        h7.check_context_agrees_within_task(model, wide, tasks),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_checks_find_each_bug_in_foreign_code_and_nothing_in_the_correct_model(variant, runs):
    """The correct model passes every model check; each broken variant fails exactly the
    checks that guard against its bug among the checks of its hypothesis."""
    _, _, hypotheses, expected = VARIANTS[variant]
    code = load_model_code(FOREIGN, runs[variant], DATA)
    results = [r for h in hypotheses for r in _checks(h, code.model, runs[variant], code)]
    assert not [r for r in results if r.status == "inconclusive"]
    assert {r.name for r in results if r.status == "fail"} == expected, [str(r) for r in results]
    gradient = next((r for r in results if r.name == "encoder_gradient_every_step"), None)
    if variant == "cached-context":  # step 1 encodes afresh; steps 2 and 3, without resets, reuse the cache
        assert gradient.numbers["starved_steps"] == 2 and "step(s) [2, 3]" in gradient.message
    if variant in ("detached-context", "origin-etrmtrm"):
        assert "step(s) [1, 2, 3]" in gradient.message


# --- end to end: etrm investigate --model-code ---------------------------------------------------


def _investigate(run: Path, tmp_path: Path) -> tuple[int, dict]:
    parser = investigate.argparse.ArgumentParser(prog="etrm")
    investigate.add_parser(parser.add_subparsers())
    verdict = tmp_path / "verdict.json"
    args = parser.parse_args(
        [
            "investigate",
            "--model-code",
            str(FOREIGN),
            "--etrm-checkpoint",
            str(run),
            "--trm-checkpoint",
            str(TRM),
            "--data",
            str(DATA),
            "-n",
            "0",
            "--verdict-json",
            str(verdict),
            "-m",
            "hypothesis1 or hypothesis2 or hypothesis3 or hypothesis7",
            "-k",
            "checkpoint_",
        ]
    )
    return investigate.run(args), json.loads(verdict.read_text())


@pytest.mark.parametrize("variant, evidence", [("correct", {}), ("detached-context", {"hypothesis2"})])
def test_investigate_with_model_code_finds_only_the_planted_bug(variant, evidence, runs, tmp_path):
    status, verdict = _investigate(runs[variant], tmp_path)
    rows = {
        r["hypothesis"]: r["verdict"]
        for r in verdict["rows"]
        if r["hypothesis"] in ("hypothesis1", "hypothesis2", "hypothesis3", "hypothesis7")
    }
    assert rows == {h: "evidence found" if h in evidence else "no evidence" for h in rows}, rows
    assert status == (1 if evidence else 0)
    failed = {
        c["name"]
        for t in verdict["tests"]
        for c in t["checks"]
        if c["status"] == "fail" and not c.get("negative_control")
    }
    assert failed == ({"encoder_gradient_every_step"} if evidence else set())

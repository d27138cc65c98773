"""Checkpoint tools: safe reading, key layouts, pretrained-decoder loading, our checkpoints
with metadata, EMA provenance, decoder comparison and the inspect / verify-decoder commands."""

from __future__ import annotations

import os
import zipfile
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml

from etrm.checkpoints import (
    DECODER_BUFFERS,
    ENCODER_BUFFERS,
    CheckpointError,
    ConfigMismatchError,
    DecoderLoadError,
    LegacyCheckpointWarning,
    act_key,
    compare_decoders,
    ema_provenance,
    inspect_checkpoint,
    load_checkpoint,
    load_model,
    load_pretrained_decoder,
    normalize_key,
    read_state_dict,
    save_checkpoint,
    sidecar_path,
)
from etrm.cli import main
from etrm.config import tiny_config
from etrm.config.importer import DECODER_SETTINGS, import_training_config, write_training_config
from etrm.models import build_model
from etrm.suite.support import CompiledLayout

TRM_CFG = tiny_config("trm")
OFFICIAL = "_orig_mod.model."
PUZZLE_KEY = OFFICIAL + "inner.puzzle_emb.weights"
# Every layout a checkpoint may come in: compiled, plain LossHead, DDP, both wrappers, bare ACT model.
LAYOUTS = [OFFICIAL, "model.", "module.model.", "module._orig_mod.model.", "_orig_mod.module.model.", ""]


def seeded_head(model_type: str = "trm", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(model_type, **overrides))


@pytest.fixture(scope="module")
def trm_state() -> dict[str, torch.Tensor]:
    """A "trained" tiny TRM in the official layout (torch.compile's, through the stand-in)."""
    head = seeded_head("trm", seed=0)
    with torch.no_grad():
        head.model.inner.q_head.weight.normal_()  # so no decoder tensor is left at a constant init
        head.model.inner.puzzle_emb.weights.normal_()
    state = {k: v.detach().clone() for k, v in CompiledLayout(head).state_dict().items()}
    assert PUZZLE_KEY in state and all(k.startswith(OFFICIAL) for k in state)
    return state


def relayout(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    return {layout + act_key(k): v for k, v in state.items()}


def save(tmp_path: Path, state: dict, name: str = "step_100") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def decoder_of(state: dict) -> dict[str, torch.Tensor]:
    return {
        act_key(k).removeprefix("inner."): v
        for k, v in state.items()
        if act_key(k).startswith("inner.") and "puzzle_emb" not in k
    }


def assert_decoder_equals(head, state: dict) -> None:
    expected = decoder_of(state)
    actual = {k: v for k, v in head.model.inner.state_dict().items() if not k.startswith("puzzle_emb.")}
    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"{name} differs from the checkpoint"


# --- key normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, normalized, act",
    [
        ("_orig_mod.model.inner.lm_head.weight", "model.inner.lm_head.weight", "inner.lm_head.weight"),
        ("module.model.inner.H_init", "model.inner.H_init", "inner.H_init"),
        ("module._orig_mod.model.encoder.x", "model.encoder.x", "encoder.x"),
        ("_orig_mod.module._orig_mod.inner.H_init", "inner.H_init", "inner.H_init"),
        ("model.inner.L_level.module.weight", "model.inner.L_level.module.weight", "inner.L_level.module.weight"),
        ("inner.my_orig_mod.x", "inner.my_orig_mod.x", "inner.my_orig_mod.x"),
        ("modules.model.inner.x", "modules.model.inner.x", "modules.model.inner.x"),
    ],
)
def test_prefixes_are_stripped_only_at_the_start(key, normalized, act):
    assert normalize_key(key) == normalized
    assert act_key(key) == act


def test_known_buffer_names_match_the_modules():
    for model_type in ("trm", "etrm", "etrmtrm"):
        act = seeded_head(model_type).model
        params = {n for n, _ in act.named_parameters()}
        buffers = set(act.state_dict()) - params
        assert {b.removeprefix("inner.") for b in buffers if b.startswith("inner.")} <= DECODER_BUFFERS
        assert {b.removeprefix("encoder.") for b in buffers if b.startswith("encoder.")} == set(ENCODER_BUFFERS)
        assert not any(b.removeprefix("inner.") in DECODER_BUFFERS for b in params)


# --- loading a pretrained decoder -------------------------------------------------------------


@pytest.mark.slow
def test_the_compiled_stand_in_has_torch_compiles_layout_and_loads_alike(tmp_path, trm_state):
    """The one test here that wraps with real torch.compile; the others use CompiledLayout, held
    to it here. Slow: importing dynamo costs 1-3.5 s in the worker that runs it, and the default
    run loads real `_orig_mod.` checkpoints saved by the official trainer (tests/test_interop_*)."""
    head = seeded_head("etrm", seed=1)
    real, stand_in = torch.compile(head), CompiledLayout(head)
    assert list(stand_in.state_dict()) == list(real.state_dict())
    assert [n for n, _ in stand_in.named_parameters()] == [n for n, _ in real.named_parameters()]
    assert stand_in._orig_mod is real._orig_mod is head
    path = save(tmp_path, trm_state)
    states = []
    for wrap in (torch.compile, CompiledLayout):
        target = seeded_head("etrm", seed=1)
        load_pretrained_decoder(wrap(target), path)
        states.append(target.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert torch.equal(states[0]["model.inner.lm_head.weight"], decoder_of(trm_state)["lm_head.weight"])


@pytest.mark.parametrize("target", ["head", "act", "compiled"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoder_loads_bitwise_from_every_layout_into_every_target(tmp_path, trm_state, layout, target):
    path = save(tmp_path, relayout(trm_state, layout))
    head = seeded_head("etrm", seed=1)
    assert not torch.equal(head.model.inner.lm_head.weight, decoder_of(trm_state)["lm_head.weight"])
    encoder_before = {k: v.clone() for k, v in head.model.encoder.state_dict().items()}
    model = {"head": head, "act": head.model, "compiled": CompiledLayout(head)}[target]
    file_bytes = path.read_bytes()

    report = load_pretrained_decoder(model, path)

    assert path.read_bytes() == file_bytes  # the input file is never modified

    assert_decoder_equals(head, trm_state)
    assert all(torch.equal(v, encoder_before[k]) for k, v in head.model.encoder.state_dict().items())
    n_params = len(list(head.model.inner.parameters()))
    assert len(report.loaded_params) == n_params and report.loaded_buffers == ("H_init", "L_init")
    assert not report.missing_params and not report.missing_buffers and report.ok
    assert list(report.skipped) == [layout + "inner.puzzle_emb.weights"]
    assert report.key_layouts == (layout,)
    summary = report.summary()
    assert (
        f"parameters: {n_params}/{n_params} loaded" in summary and "buffers:    2/2 loaded (H_init, L_init" in summary
    )


def test_decoder_loads_into_etrmtrm_and_reports_bf16_buffer_casts(tmp_path, trm_state):
    state = dict(trm_state)
    for name in ("H_init", "L_init"):  # the official checkpoint stores these in bfloat16
        state[OFFICIAL + "inner." + name] = state[OFFICIAL + "inner." + name].bfloat16()
    head = seeded_head("etrmtrm", seed=1)
    report = load_pretrained_decoder(head, save(tmp_path, state))
    assert report.dtype_casts == {"H_init": ("bfloat16", "float32"), "L_init": ("bfloat16", "float32")}
    assert torch.equal(head.model.inner.H_init, state[OFFICIAL + "inner.H_init"].float())
    assert "H_init bfloat16->float32" in report.summary()


def _expect_load_error(path: Path, fragments: list[str], error=DecoderLoadError, model_type: str = "etrm", **cfg):
    head = seeded_head(model_type, seed=1, **cfg)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with pytest.raises(error) as err:
        load_pretrained_decoder(head, path)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in: {err.value}"
    # Nothing is loaded unless everything loads.
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())
    return err.value


@pytest.mark.parametrize("wrong", ["backbone.", "_orig_mod.model.decoder.", "_orig_mod.net."])
def test_wrong_prefix_is_an_error_naming_the_keys(tmp_path, trm_state, wrong):
    state = {wrong + act_key(k).removeprefix("inner."): v for k, v in trm_state.items()}
    err = _expect_load_error(
        save(tmp_path, state), ["missing from the checkpoint", "lm_head.weight", "not decoder tensors"]
    )
    assert len(err.report.loaded_params) == 0 and len(err.report.missing_params) > 0


def _warn_only_loader(model, path):
    """The origin loader's behaviour: load_state_dict(strict=False) and print the missing keys."""
    result = model.load_state_dict(read_state_dict(path), strict=False)
    print(f"WARNING: keys not loaded: {result.missing_keys}")


def test_the_wrong_prefix_test_catches_a_loader_that_only_warns(tmp_path, trm_state):
    """Negative control: the assertion used above fails for a loader that only warns."""
    path = save(tmp_path, {"backbone." + k: v for k, v in trm_state.items()})
    with pytest.raises(pytest.fail.Exception):
        with pytest.raises(CheckpointError):
            _warn_only_loader(seeded_head("etrm", seed=1), path)


def test_missing_decoder_tensor_is_an_error(tmp_path, trm_state):
    state = {k: v for k, v in trm_state.items() if not k.endswith("L_level.layers.0.mlp.down_proj.weight")}
    _expect_load_error(save(tmp_path, state), ["L_level.layers.0.mlp.down_proj.weight"])
    state = {k: v for k, v in trm_state.items() if not k.endswith("L_init")}
    err = _expect_load_error(save(tmp_path, state, "step_2"), ["L_init"])
    assert err.report.missing_buffers == ("L_init",) and not err.report.missing_params


def test_shape_mismatch_is_an_error_naming_both_shapes(tmp_path, trm_state):
    state = dict(trm_state)
    state[OFFICIAL + "inner.lm_head.weight"] = torch.zeros(13, 32)
    _expect_load_error(save(tmp_path, state), ["lm_head.weight: checkpoint shape (13, 32), model shape (12, 32)"])


def test_decoder_key_the_model_lacks_is_an_error(tmp_path, trm_state):
    state = dict(trm_state)
    state[OFFICIAL + "inner.embed_pos.embedding_weight"] = torch.zeros(104, 32)  # learned positions; model uses RoPE
    _expect_load_error(save(tmp_path, state), ["_orig_mod.model.inner.embed_pos.embedding_weight"])


def test_duplicate_keys_under_two_prefixes_are_an_error(tmp_path, trm_state):
    state = dict(trm_state)
    state["model.inner.lm_head.weight"] = trm_state[OFFICIAL + "inner.lm_head.weight"] + 1
    _expect_load_error(save(tmp_path, state), ["present twice", "lm_head.weight"])


@pytest.mark.parametrize("name, value", [("q_head.weight", float("nan")), ("H_init", float("inf"))])
def test_non_finite_decoder_tensor_is_an_error_naming_it(tmp_path, trm_state, name, value):
    state = dict(trm_state)
    bad = state[OFFICIAL + "inner." + name].clone()
    bad.view(-1)[0] = value
    state[OFFICIAL + "inner." + name] = bad
    _expect_load_error(save(tmp_path, state), [f"{name}: 1 NaN/Inf value(s)"])


def test_puzzle_embedding_is_skipped_without_being_checked(tmp_path, trm_state):
    state = dict(trm_state)
    state[PUZZLE_KEY] = torch.full_like(trm_state[PUZZLE_KEY], float("nan"))  # would fail any scan
    report = load_pretrained_decoder(seeded_head("etrm", seed=1), save(tmp_path, state))
    assert PUZZLE_KEY in report.skipped and report.ok


def test_config_is_verified_against_a_saved_all_config(tmp_path, trm_state):
    path = save(tmp_path, trm_state)
    write_training_config(tmp_path / "all_config.yaml", TRM_CFG)
    report = load_pretrained_decoder(seeded_head("etrm", seed=1), path)
    assert report.config_status == "verified" and report.config_source == str(tmp_path / "all_config.yaml")
    assert report.settings["L_cycles"] == (2, 2) and report.unverified_settings == ()


def test_config_mismatch_is_an_error_naming_both_values(tmp_path, trm_state):
    path = save(tmp_path, trm_state)
    write_training_config(tmp_path / "all_config.yaml", TRM_CFG.replace(L_cycles=4))  # trained with 4, model has 2
    _expect_load_error(path, ["L_cycles: model 2, checkpoint 4", "all_config.yaml"], error=ConfigMismatchError)


def test_without_saved_config_the_settings_are_unverified(tmp_path, trm_state):
    report = load_pretrained_decoder(seeded_head("etrm", seed=1), save(tmp_path, trm_state))
    assert report.config_status == "unverified" and report.config_source is None
    assert report.unverified_settings == DECODER_SETTINGS
    assert "UNVERIFIED" in report.summary()


def test_loading_into_trm_is_refused(tmp_path, trm_state):
    with pytest.raises(TypeError, match="ETRM/ETRMTRM"):
        load_pretrained_decoder(seeded_head("trm"), save(tmp_path, trm_state))


# --- reading files safely ---------------------------------------------------------------------


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, zip_format):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save(
        {"inner.lm_head.weight": torch.zeros(2), "x": _RunsCode(marker)},
        path,
        _use_new_zipfile_serialization=zip_format,
    )
    with pytest.warns(LegacyCheckpointWarning) if not zip_format else nullcontext():
        with pytest.raises(CheckpointError, match=r"evil\.pt: refused: .*run code"):
            read_state_dict(path)
    assert not marker.exists(), "loading the checkpoint executed code"
    # Control: the payload is live, an unsafe load does run it.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_empty_directory_and_foreign_files_are_errors(tmp_path):
    with pytest.raises(CheckpointError, match="step_1: checkpoint not found"):
        read_state_dict(tmp_path / "step_1")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_state_dict(tmp_path)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty: empty file"):
        read_state_dict(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "notes.txt")


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_file_is_an_error(tmp_path, trm_state, zip_format):
    path = tmp_path / "step_1"
    torch.save(trm_state, path, _use_new_zipfile_serialization=zip_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(LegacyCheckpointWarning) if not zip_format else nullcontext():
        with pytest.raises(CheckpointError, match="step_1: truncated or corrupt"):
            read_state_dict(path)


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ([torch.zeros(1)], "expected a state dict .* got list"),
        ({"inner.H_init": torch.zeros(1), "step": 5}, "not a state dict: entry 'step' holds a int, not a tensor"),
        ({}, "the state dict is empty"),
    ],
)
def test_payload_that_is_not_a_state_dict_is_an_error(tmp_path, payload, fragment):
    path = save(tmp_path, payload)
    with pytest.raises(CheckpointError, match=f"step_100: {fragment}"):
        read_state_dict(path)


def test_resume_bundle_reads_its_model_entry(tmp_path, trm_state):
    path = save(tmp_path, {"model": trm_state, "optimizers": [{"state": {}, "param_groups": []}], "step": 7})
    assert read_state_dict(path).keys() == trm_state.keys()


def test_legacy_format_loads_with_a_clear_warning_or_is_refused(tmp_path, trm_state):
    path = tmp_path / "step_1"
    torch.save(trm_state, path, _use_new_zipfile_serialization=False)
    with pytest.warns(LegacyCheckpointWarning, match="legacy .*cannot be memory-mapped.*re-save it with torch.save"):
        state = read_state_dict(path)
    assert all(torch.equal(state[k], v) for k, v in trm_state.items())
    with pytest.raises(CheckpointError, match="step_1: legacy .*cannot be memory-mapped"):
        load_pretrained_decoder(seeded_head("etrm"), path, allow_legacy=False)


# --- our checkpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", ["head", "act", "compiled"])
def test_save_writes_the_official_layout_with_metadata_and_all_config(tmp_path, wrap):
    head = seeded_head("etrm", seed=2)
    module = {"head": head, "act": head.model, "compiled": CompiledLayout(head)}[wrap]
    path = save_checkpoint(
        tmp_path / "run" / "step_10",
        module,
        step=10,
        ema_rate=0.999,
        is_ema=True,
        training_config={"lr": 3e-4, "freeze_decoder_steps": 5},
    )
    assert zipfile.is_zipfile(path)
    state, meta = load_checkpoint(path)
    assert set(state) == {OFFICIAL + k for k in head.model.state_dict()}
    assert all(torch.equal(state[OFFICIAL + k], v) for k, v in head.model.state_dict().items())
    assert (meta.step, meta.is_ema, meta.ema_rate, meta.model_config) == (10, True, 0.999, head.config)
    imported = import_training_config(path.parent / "all_config.yaml")
    assert imported.model_config == head.config
    assert imported.training["lr"] == 3e-4 and imported.training["ema"] is True
    assert not list(path.parent.glob("*.tmp"))


def test_uncompiled_layout_and_load_model_round_trip(tmp_path):
    head = seeded_head("trm", seed=3)
    with torch.no_grad():
        head.model.inner.puzzle_emb.weights.normal_()
    path = save_checkpoint(tmp_path / "step_1", head, step=1, compiled_layout=False)
    assert all(k.startswith("model.inner.") for k in load_checkpoint(path)[0])
    loaded = load_model(path)
    assert loaded.config == head.config
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_load_model_from_a_foreign_checkpoint_reads_all_config_and_the_table_size(tmp_path, trm_state):
    path = save(tmp_path, trm_state)
    with pytest.raises(CheckpointError, match="no etrm metadata or all_config.yaml"):
        load_model(path)
    write_training_config(tmp_path / "all_config.yaml", TRM_CFG.replace(num_puzzle_identifiers=1))
    loaded = load_model(path)
    assert loaded.config.num_puzzle_identifiers == TRM_CFG.num_puzzle_identifiers  # from puzzle_emb.weights rows
    assert torch.equal(loaded.model.inner.puzzle_emb.weights, trm_state[PUZZLE_KEY])
    assert_decoder_equals(loaded, trm_state)
    with pytest.raises(ConfigMismatchError, match="H_cycles: model 3, checkpoint 2"):
        load_model(path, TRM_CFG.replace(H_cycles=3))


def test_load_model_errors_name_the_tensors(tmp_path, trm_state):
    state = dict(trm_state)
    state[OFFICIAL + "inner.lm_head.weight"] = torch.full((12, 32), float("nan"))
    del state[OFFICIAL + "inner.L_init"]
    with pytest.raises(CheckpointError, match=r"missing \['model.inner.L_init'\].*lm_head.weight: 384 NaN/Inf"):
        load_model(save(tmp_path, state), TRM_CFG)


def test_save_refuses_to_overwrite_another_runs_all_config(tmp_path):
    write_training_config(tmp_path / "all_config.yaml", TRM_CFG.replace(L_cycles=4))
    before = (tmp_path / "all_config.yaml").read_text()
    with pytest.raises(CheckpointError, match="already describes a different run"):
        save_checkpoint(tmp_path / "step_1", seeded_head("trm"), step=1)
    assert (tmp_path / "all_config.yaml").read_text() == before and not (tmp_path / "step_1").exists()
    with pytest.raises(ValueError, match="ema_rate"):
        save_checkpoint(tmp_path / "x" / "step_1", seeded_head("trm"), step=1, is_ema=True)


def test_ema_provenance_comes_from_metadata_or_config_only(tmp_path, trm_state):
    head = seeded_head("trm")
    ema_path = save_checkpoint(tmp_path / "ema" / "step_1", head, step=1, ema_rate=0.999, is_ema=True)
    raw_path = save_checkpoint(tmp_path / "raw" / "step_1", head, step=1, ema_rate=0.999, is_ema=False)
    assert (ema_provenance(ema_path), ema_provenance(raw_path)) == ("ema", "raw")
    # A foreign checkpoint: low-std weights say nothing; only the config beside it counts.
    smooth = {k: v * 1e-3 for k, v in trm_state.items()}
    foreign = save(tmp_path, smooth)
    assert ema_provenance(foreign) == "unknown"
    config = yaml.safe_load(open(ema_path.parent / "all_config.yaml"))
    for flag, expected in ((True, "ema"), (False, "raw")):
        config["ema"] = flag
        (tmp_path / "all_config.yaml").write_text(yaml.safe_dump(config))
        assert ema_provenance(foreign) == expected
    sidecar_path(ema_path).unlink()  # without our metadata the run's config decides
    assert ema_provenance(ema_path) == "ema"


# --- comparing decoders and the commands ------------------------------------------------------


@pytest.fixture
def trm_and_etrm(tmp_path, trm_state):
    trm_path = save(tmp_path, trm_state, "trm_step")
    head = seeded_head("etrm", seed=1)
    load_pretrained_decoder(head, trm_path)
    return trm_path, head


def test_compare_decoders_equal_after_loading(tmp_path, trm_and_etrm):
    trm_path, head = trm_and_etrm
    etrm_path = save_checkpoint(tmp_path / "etrm" / "step_1", head, step=1)
    result = compare_decoders(trm_path, etrm_path)
    assert result.all_params_equal and result.num_params_equal == len(result.params) == 8
    assert [d.name for d in result.buffers] == ["H_init", "L_init"] and all(d.equal for d in result.buffers)
    assert result.only_in_trm == () and "verdict: every decoder parameter equal" in result.summary()


def test_compare_decoders_reports_parameter_drift_and_buffers_apart(tmp_path, trm_and_etrm):
    trm_path, head = trm_and_etrm
    with torch.no_grad():
        head.model.inner.lm_head.weight[0, 0] += 0.5
        head.model.inner.H_init.add_(1.0)
    result = compare_decoders(trm_path, save_checkpoint(tmp_path / "e" / "step_1", head, step=1))
    assert not result.all_params_equal and result.num_params_equal == 7
    drift = next(d for d in result.params if d.name == "lm_head.weight")
    assert drift.max_abs_diff == pytest.approx(0.5) and drift.mean_abs_diff == pytest.approx(0.5 / (12 * 32))
    assert not next(d for d in result.buffers if d.name == "H_init").equal
    # Only a buffer differs: the parameters still all match.
    with torch.no_grad():
        head.model.inner.lm_head.weight.copy_(read_state_dict(trm_path)[OFFICIAL + "inner.lm_head.weight"])
    result = compare_decoders(trm_path, save_checkpoint(tmp_path / "f" / "step_1", head, step=1))
    assert result.all_params_equal and not all(d.equal for d in result.buffers)


def test_compare_decoders_missing_parameter_is_not_equal(tmp_path, trm_state):
    trm_path = save(tmp_path, trm_state, "a")
    other = save(tmp_path, {k: v for k, v in trm_state.items() if not k.endswith("q_head.bias")}, "b")
    result = compare_decoders(trm_path, other)
    assert result.only_in_trm == ("q_head.bias",) and not result.all_params_equal


def test_verify_decoder_command_exit_codes(tmp_path, trm_and_etrm, capsys):
    trm_path, head = trm_and_etrm
    same = save_checkpoint(tmp_path / "same" / "step_1", head, step=1)
    assert main(["verify-decoder", "--trm", str(trm_path), "--etrm", str(same)]) == 0
    assert "parameters: 8/8 equal" in capsys.readouterr().out
    with torch.no_grad():
        head.model.inner.q_head.bias.add_(1.0)
    drifted = save_checkpoint(tmp_path / "drift" / "step_1", head, step=1)
    assert main(["verify-decoder", "--trm", str(trm_path), "--etrm", str(drifted)]) == 1
    assert main(["verify-decoder", "--trm", str(trm_path), "--etrm", str(tmp_path / "nope")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_inspect_command(tmp_path, trm_state, capsys):
    path = save_checkpoint(tmp_path / "step_3", seeded_head("etrm"), step=3, ema_rate=0.999, is_ema=True)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decoder: 8 parameters, 2 buffers" in out and "encoder: 14 parameters, 0 buffers" in out
    assert "EMA provenance: ema (rate 0.999)" in out and "L_cycles 2" in out

    state = dict(trm_state)
    state[OFFICIAL + "inner.q_head.bias"] = torch.tensor([float("nan"), 0.0])
    (tmp_path / "foreign").mkdir()
    foreign = save(tmp_path / "foreign", state)
    assert main(["inspect", str(foreign)]) == 1  # a NaN is flagged
    out = capsys.readouterr().out
    assert "NON-FINITE" in out and "EMA provenance: unknown" in out
    assert "not read (puzzle embedding table" in out
    info = inspect_checkpoint(foreign, stats_all=True)
    table = next(t for t in info.tensors if t.key == PUZZLE_KEY)
    assert table.kind == "buffer" and table.stats["std"] == pytest.approx(float(trm_state[PUZZLE_KEY].std()), rel=1e-6)
    assert info.nonfinite_keys == (OFFICIAL + "inner.q_head.bias",)
    assert main(["inspect", str(tmp_path / "missing")]) == 2

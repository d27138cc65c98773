"""The training step: loss scaling, carry, clipping and norms, freezing, lrs, EMA, metrics log."""

from __future__ import annotations

import json
import math

import pytest
import torch

from etrm.config import ConfigError, tiny_config
from etrm.models import build_model
from etrm.synthetic import random_batch
from etrm.training import (
    MetricsLog,
    MetricsLogError,
    Trainer,
    TrainingConfig,
    official_trm_recipe,
    parameter_part,
    read_metrics_log,
)

BATCH = 4
# Smaller than tiny_config: a 4x4 canvas and one cycle keep a training step at a few ms.
SMALL = dict(seq_len=16, H_cycles=1, L_cycles=1, max_demos=2, halt_max_steps=2, halt_exploration_prob=0.0)


def make_head(model_type: str = "etrm", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(model_type, **{**SMALL, **overrides}))


def make_config(**overrides) -> TrainingConfig:
    base = dict(global_batch_size=BATCH, warmup_steps=0, lr=1e-3, weight_decay=0.1)
    return TrainingConfig(**{**base, **overrides})


def batch_for(head, seed: int = 0, size: int = BATCH):
    return random_batch(head.config, size, seed=seed)


def snapshot(head, part: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in head.named_parameters() if parameter_part(n) == part}


def changed(before: dict[str, torch.Tensor], head) -> list[str]:
    params = dict(head.named_parameters())
    return [n for n, value in before.items() if not torch.equal(params[n].detach(), value)]


# --- config --------------------------------------------------------------------------------------


def test_official_recipe_has_the_official_arc1_values():
    cfg = official_trm_recipe()
    assert (cfg.lr, cfg.puzzle_emb_lr, cfg.weight_decay, cfg.puzzle_emb_weight_decay) == (1e-4, 1e-2, 0.1, 0.1)
    assert (cfg.betas, cfg.warmup_steps, cfg.global_batch_size, cfg.ema_rate, cfg.lr_min_ratio) == (
        (0.9, 0.95),
        2000,
        768,
        0.999,
        1.0,
    )
    assert cfg.grad_clip_norm is None and cfg.freeze_decoder_steps == 0 and cfg.freeze_encoder_steps == 0


def test_training_config_round_trips_and_rejects_unknown_keys():
    cfg = make_config(encoder_lr_scale=0.5, grad_clip_norm=1.0, optimizer_layout="split")
    assert TrainingConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown training config key.*'epochs'"):
        TrainingConfig.from_dict({"epochs": 3})


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(lr=-1e-4), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(global_batch_size=0), "global_batch_size"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(lr_min_ratio=1.5), "lr_min_ratio"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm"),
        (dict(ema_rate=1.0), "ema_rate"),
        (dict(optimizer_layout="double"), "optimizer_layout"),
        (dict(freeze_decoder_steps=1.5), "freeze_decoder_steps"),
    ],
)
def test_training_config_validation_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        TrainingConfig(**bad)


def test_parameter_parts_are_defined_by_module_with_wrapper_prefixes():
    assert parameter_part("model.encoder.set_encoder.query_tokens") == "encoder"
    assert parameter_part("_orig_mod.module.model.inner.lm_head.weight") == "decoder"
    with pytest.raises(ValueError, match="neither model.encoder"):
        parameter_part("extra.weight")


def test_trainer_rejects_a_batch_of_the_wrong_size_and_encoder_freezing_without_encoder():
    head = make_head()
    with pytest.raises(ValueError, match="batch has 2 rows.*global_batch_size 4"):
        Trainer(head, make_config()).step(batch_for(head, size=2))
    with pytest.raises(ConfigError, match="TRM has no encoder"):
        Trainer(make_head("trm"), make_config(freeze_encoder_steps=3))


# --- loss scaling and carry ------------------------------------------------------------------------


def test_loss_is_divided_by_the_global_batch_size():
    # The same 4 samples twice in a global batch of 8 give the same mean loss, so the same
    # gradient as the 4 samples in a batch of 4; an unscaled (or wrongly scaled) sum would not.
    small = batch_for(make_head())
    doubled = {k: torch.cat([v, v]) for k, v in small.items()}
    rec4 = Trainer(make_head(), make_config()).step(small)
    rec8 = Trainer(make_head(), make_config(global_batch_size=8)).step(doubled)
    assert rec8["grad/total_norm_preclip"] == pytest.approx(rec4["grad/total_norm_preclip"], rel=1e-5)
    assert rec8["train/lm_loss"] == pytest.approx(rec4["train/lm_loss"], rel=1e-6)
    assert rec4["train/lm_loss"] < 5  # a per-sample mean of the token loss, not a batch sum


def test_carry_persists_across_trainer_steps():
    head = make_head(halt_max_steps=3)
    trainer = Trainer(head, make_config())
    batches = [batch_for(head, seed=s) for s in range(4)]
    for step, batch in enumerate(batches[:3], start=1):
        trainer.step(batch)
        # No sample halts before step 3: every slot keeps the first batch's sample.
        assert torch.equal(trainer.carry.current_data["inputs"], batches[0]["inputs"]), f"step {step}"
        assert torch.equal(trainer.carry.current_data["demo_inputs"], batches[0]["demo_inputs"])
    assert trainer.carry.halted.all()
    trainer.step(batches[3])
    assert torch.equal(trainer.carry.current_data["inputs"], batches[3]["inputs"])


# --- clipping and gradient norms -----------------------------------------------------------------


def clip_report_problems(record: dict, clip: float) -> list[str]:
    """What is wrong with a record's gradient norms for a run clipped at `clip`."""
    problems = []
    if not record["grad/total_norm_preclip"] > clip * 1.01:
        problems.append(
            f"pre-clip total {record['grad/total_norm_preclip']} is not above the threshold {clip}: "
            f"it was measured after clipping"
        )
    if record["grad/total_norm_postclip"] > clip * 1.001:
        problems.append(f"post-clip total {record['grad/total_norm_postclip']} exceeds the threshold {clip}")
    return problems


class NormsAfterClipTrainer(Trainer):
    """Negative control: the origin's mistake, norms taken after clipping."""

    def _clip_and_measure(self):
        params = [p for part in ("encoder", "decoder") for _, p in self.named_params[part] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm)
        norms = self.grad_norms()
        return norms, norms


def test_gradient_norms_are_measured_before_clipping():
    clip = 1e-3
    head = make_head()
    record = Trainer(head, make_config(grad_clip_norm=clip)).step(batch_for(head))
    assert clip_report_problems(record, clip) == []
    assert record["grad/total_norm_postclip"] == pytest.approx(clip, rel=1e-3)
    for part in ("encoder", "decoder"):  # the clip scales every part by the same factor
        ratio = record[f"grad/{part}_norm_postclip"] / record[f"grad/{part}_norm_preclip"]
        assert ratio == pytest.approx(clip / record["grad/total_norm_preclip"], rel=1e-3)
    pre = math.hypot(record["grad/encoder_norm_preclip"], record["grad/decoder_norm_preclip"])
    assert record["grad/total_norm_preclip"] == pytest.approx(pre, rel=1e-5)


def test_negative_control_norms_after_clipping_are_caught():
    clip = 1e-3
    head = make_head()
    record = NormsAfterClipTrainer(head, make_config(grad_clip_norm=clip)).step(batch_for(head))
    assert clip_report_problems(record, clip)


def test_without_clipping_pre_and_post_norms_agree():
    head = make_head()
    record = Trainer(head, make_config()).step(batch_for(head))
    for part in ("encoder", "decoder", "total"):
        assert record[f"grad/{part}_norm_postclip"] == record[f"grad/{part}_norm_preclip"] > 0


# --- freezing --------------------------------------------------------------------------------------


class ZeroGradFreezeTrainer(Trainer):
    """Negative control: "freezing" by zeroing the frozen part's gradients."""

    def _set_trainable(self, frozen):
        pass

    def _discard_frozen_grads(self, frozen):
        for part in frozen:
            for _, p in self.named_params[part]:
                if p.grad is not None:
                    p.grad.zero_()


@pytest.mark.parametrize("layout", ["single", "split"])
def test_frozen_decoder_gets_no_update_and_no_decay_while_the_encoder_trains(layout):
    head = make_head()
    trainer = Trainer(head, make_config(freeze_decoder_steps=2, optimizer_layout=layout))
    decoder, encoder = snapshot(head, "decoder"), snapshot(head, "encoder")
    records = [trainer.step(batch_for(head, seed=s)) for s in range(2)]
    assert changed(decoder, head) == []  # bitwise: not even weight decay
    assert sorted(changed(encoder, head)) == sorted(encoder)  # every encoder parameter moved
    assert [r["frozen/decoder"] for r in records] == [1.0, 1.0]
    assert records[0]["grad/decoder_norm_preclip"] == 0.0 and records[0]["grad/encoder_norm_preclip"] > 0
    record = trainer.step(batch_for(head, seed=2))  # step 3: the decoder trains again
    assert sorted(changed(decoder, head)) == sorted(decoder)
    assert record["frozen/decoder"] == 0.0 and record["grad/decoder_norm_preclip"] > 0


@pytest.mark.parametrize("layout", ["single", "split"])
def test_frozen_encoder_gets_no_update_and_no_decay_while_the_decoder_trains(layout):
    head = make_head()
    trainer = Trainer(head, make_config(freeze_encoder_steps=2, optimizer_layout=layout))
    decoder, encoder = snapshot(head, "decoder"), snapshot(head, "encoder")
    for s in range(2):
        trainer.step(batch_for(head, seed=s))
    assert changed(encoder, head) == []
    assert sorted(changed(decoder, head)) == sorted(decoder)
    trainer.step(batch_for(head, seed=2))
    assert sorted(changed(encoder, head)) == sorted(encoder)
    assert all(p.requires_grad for p in head.parameters())  # unfreezing restored every flag


def test_parameters_frozen_before_the_trainer_stay_frozen():
    head = make_head()
    head.model.freeze_encoder()
    encoder = snapshot(head, "encoder")
    trainer = Trainer(head, make_config(freeze_decoder_steps=1))
    for s in range(2):  # through a decoder freeze and unfreeze
        record = trainer.step(batch_for(head, seed=s))
    assert changed(encoder, head) == [] and head.model.encoder_frozen
    assert record["grad/encoder_norm_preclip"] == 0.0 and record["grad/decoder_norm_preclip"] > 0


@pytest.mark.parametrize("layout", ["single", "split"])
def test_negative_control_a_frozen_decoder_that_still_decays_is_caught(layout):
    head = make_head()
    trainer = ZeroGradFreezeTrainer(head, make_config(freeze_decoder_steps=2, optimizer_layout=layout))
    decoder = snapshot(head, "decoder")
    trainer.step(batch_for(head))
    assert changed(decoder, head), "zeroed gradients should still let AdamATan2 decay the decoder"


def test_frozen_trm_decoder_leaves_the_puzzle_embedding_alone_until_unfrozen():
    head = make_head("trm")
    emb = head.model.inner.puzzle_emb.weights
    emb.normal_()
    before = emb.clone()
    trainer = Trainer(head, make_config(freeze_decoder_steps=1))
    batch = batch_for(head)
    trainer.step(batch)
    assert torch.equal(emb, before)
    trainer.step(batch)  # slots have not halted: same identifiers, now updated by sign-SGD
    used = batch["puzzle_identifiers"].long().unique()
    assert not torch.equal(emb[used], before[used])
    unused = torch.ones(len(emb), dtype=torch.bool)
    unused[used] = False
    assert torch.equal(emb[unused], before[unused])


# --- learning rates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["single", "split"])
def test_encoder_learning_rate_and_decay_are_separate_param_groups(layout):
    head = make_head()
    cfg = make_config(
        lr=2e-3, encoder_lr_scale=0.25, encoder_weight_decay_scale=0.1, optimizer_layout=layout, warmup_steps=4
    )
    trainer = Trainer(head, cfg)
    assert len(trainer.optimizers) == (1 if layout == "single" else 2)
    record = trainer.step(batch_for(head))
    groups = {g["part"]: g for opt in trainer.optimizers for g in opt.param_groups}
    assert groups["encoder"]["lr"] == pytest.approx(0.25 * groups["decoder"]["lr"])
    assert groups["decoder"]["lr"] == pytest.approx(2e-3 / 4)  # warmup step 1 of 4
    assert groups["encoder"]["weight_decay"] == pytest.approx(0.01) and groups["decoder"]["weight_decay"] == 0.1
    assert record["lr"] == groups["decoder"]["lr"] and record["lr/encoder"] == groups["encoder"]["lr"]
    encoder_ids = {id(p) for _, p in trainer.named_params["encoder"]}
    assert {id(p) for p in groups["encoder"]["params"]} == encoder_ids


# --- EMA -----------------------------------------------------------------------------------------


def test_ema_follows_the_parameters():
    pytest.importorskip("etrm.ema", reason="etrm.ema (written by the checkpoint engineer) is not there yet")
    head = make_head()
    initial = {n: p.detach().clone() for n, p in head.named_parameters()}
    trainer = Trainer(head, make_config(ema_rate=0.5))
    trainer.step(batch_for(head))
    ema = dict(trainer.eval_head().named_parameters())
    for name, param in head.named_parameters():  # one update: shadow = 0.5 * initial + 0.5 * current
        torch.testing.assert_close(ema[name].detach(), 0.5 * initial[name] + 0.5 * param.detach())
    assert Trainer(make_head(), make_config()).eval_head() is not None


# --- metrics log ---------------------------------------------------------------------------------

EXPECTED_KEYS = {
    "step",
    "train/loss",
    "train/lm_loss",
    "train/q_halt_loss",
    "train/kl_loss",
    "train/accuracy",
    "train/exact_accuracy",
    "train/q_halt_accuracy",
    "train/steps",
    "train/count",
    "lr",
    "lr/encoder",
    "frozen/encoder",
    "frozen/decoder",
    *(f"grad/{p}_norm_{s}" for p in ("encoder", "decoder", "total") for s in ("preclip", "postclip")),
    *(
        f"encoder/{k}"
        for k in ("output_mean", "output_std", "output_norm", "cross_sample_std", "within_task_std", "token_std")
    ),
}


def test_metrics_log_has_one_parsable_line_per_step(tmp_path):
    head = make_head()
    path = tmp_path / "metrics.jsonl"
    trainer = Trainer(head, make_config(), metrics_log=path)
    returned = [trainer.step(batch_for(head, seed=s)) for s in range(2)]
    records = read_metrics_log(path)
    assert [r["step"] for r in records] == [1, 2]
    assert set(records[0]) == EXPECTED_KEYS
    assert records[1]["train/count"] == BATCH and records[1]["train/steps"] == 2.0  # all halt at step 2
    assert math.isnan(records[0]["train/accuracy"])  # nothing halted at step 1: undefined, not 0
    assert records[1]["train/lm_loss"] == returned[1]["train/lm_loss"]


def test_metrics_log_refuses_to_overwrite_and_appends_on_request(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.write({"step": 1, "x": 1.0})
    with pytest.raises(FileExistsError, match="m.jsonl"):
        MetricsLog(path)
    with MetricsLog(path, append=True) as log:
        log.write({"step": 2, "x": float("nan")})
        with pytest.raises(MetricsLogError, match="integer 'step'"):
            log.write({"x": 1.0})
    assert [r["step"] for r in log.read()] == [1, 2]


@pytest.mark.parametrize(
    "line, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), ('{"loss": 1.0}', "no integer 'step'")],
)
def test_read_metrics_log_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1}\n\n' + line + "\n")
    with pytest.raises(MetricsLogError, match=rf"bad\.jsonl:3: {message}"):
        read_metrics_log(path)
    with pytest.raises(MetricsLogError, match="not found"):
        read_metrics_log(tmp_path / "missing.jsonl")

"""etrm.bench: sizes, the FLOP formula, the timing helpers and `etrm bench recursion`."""

from __future__ import annotations

import json

import pytest
import torch

from etrm import bench
from etrm.bench import command, timing
from etrm.cli import main
from etrm.config import tiny_config
from etrm.layers import CastedLinear, onednn_linear_available

# --- sizes and FLOPs ---------------------------------------------------------------------


def test_sizes_are_the_specified_configurations():
    assert bench.SIZES["tiny"].config("trm") == tiny_config("trm")
    assert bench.SIZES["tiny"].config("etrm") == tiny_config("etrm")
    mid, official = bench.SIZES["mid"], bench.SIZES["official"]
    for size, hidden, heads, batch in ((mid, 128, 4, 2), (official, 512, 8, 1)):
        cfg = size.config("trm")
        assert size.batch == batch
        assert (cfg.hidden_size, cfg.num_heads, cfg.seq_len, cfg.puzzle_emb_len) == (hidden, heads, 900, 16)
        assert (cfg.H_cycles, cfg.L_cycles, cfg.L_layers, cfg.expansion, cfg.forward_dtype) == (3, 4, 2, 4.0, "float32")
        assert cfg.puzzle_emb_ndim == hidden  # the puzzle vector fills prefix token 0, as in the official recipe
        etrm_cfg = size.config("etrm")
        assert etrm_cfg.model_type == "etrm" and etrm_cfg.puzzle_emb_ndim == 0
        assert etrm_cfg.replace(model_type="trm", puzzle_emb_ndim=hidden) == cfg  # same decoder


def test_unknown_size_and_model_are_errors_that_list_the_valid_names():
    with pytest.raises(ValueError, match="huge.*tiny, mid, official"):
        bench.get_size("huge")
    with pytest.raises(ValueError, match="hrm.*trm, etrm, etrmtrm"):
        bench.SIZES["tiny"].config("hrm")


def test_step_flops_is_the_design_formula():
    cfg = bench.SIZES["mid"].config("trm")
    # h 128, inter round(4*128*2/3)=341 -> 512, S 916, 2 layers, 3*(4+1) stack calls, batch 2
    per_token = 2 * 2 * (4 * 128**2 + 3 * 128 * 512) + 4 * 2 * 916 * 128
    assert bench.step_flops(cfg, 2) == 15 * 2 * 916 * per_token
    official = bench.SIZES["official"].config("trm")
    assert official.swiglu_width == 1536
    assert bench.step_flops(official, 1) == 15 * 916 * (2 * 2 * (4 * 512**2 + 3 * 512 * 1536) + 4 * 2 * 916 * 512)
    # one more L cycle adds one stack call per H cycle; the encoder is not counted
    assert bench.step_flops(cfg.replace(L_cycles=5), 2) * 15 == bench.step_flops(cfg, 2) * 18
    assert bench.step_flops(bench.SIZES["mid"].config("etrm"), 2) == bench.step_flops(cfg, 2)


def test_benchmark_batches_carry_typical_demo_counts():
    size = bench.SIZES["mid"]
    cfg = size.config("etrm")
    batch = bench.make_batch(size, cfg)
    assert batch["inputs"].shape == (2, 900)
    assert batch["demo_mask"].sum(1).tolist() == [bench.TYPICAL_DEMOS] * 2
    assert "demo_inputs" not in bench.make_batch(size, size.config("trm"))


# --- timing helpers ------------------------------------------------------------------------


def test_alternate_interleaves_calls_and_does_not_time_warmup():
    order = []
    times = bench.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeat=3, warmup=2)
    assert order == ["a", "b"] * 5  # A B A B ..., warm-up rounds included
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeat"):
        bench.alternate({"a": lambda: None}, repeat=0)


def test_median_ms():
    assert bench.median_ms([0.003, 0.001, 0.002]) == pytest.approx(2.0)


@pytest.fixture(scope="module")
def tiny_trm():
    size = bench.SIZES["tiny"]
    cfg = size.config("trm")
    return bench.make_head(cfg), bench.make_batch(size, cfg)


def test_inference_step_runs_an_eval_act_step_without_autograd(tiny_trm):
    head, batch = tiny_trm
    seen = []
    handle = head.model.inner.register_forward_hook(
        lambda m, i, o: seen.append((m.training, torch.is_grad_enabled(), o[1].requires_grad))
    )
    try:
        step = bench.inference_step(head, batch)
        step()
        step()
    finally:
        handle.remove()
    assert seen == [(False, False, False)] * 2


def test_training_step_runs_backward_and_leaves_no_gradient(tiny_trm):
    head, batch = tiny_trm
    weight = head.model.inner.L_level.layers[0].mlp.down_proj.weight
    grads = []
    handle = weight.register_hook(lambda g: grads.append(g.abs().sum().item()))
    try:
        bench.training_step(head, batch)()
    finally:
        handle.remove()
    assert len(grads) == 1 and grads[0] > 0  # backward reached the decoder
    assert all(p.grad is None for p in head.parameters())  # and the step cleaned up after itself


def test_time_recursion_reports_medians_and_gflops():
    result = bench.time_recursion("tiny", "etrm", "cpu", repeat=2, warmup=1)
    assert result["infer_ms"] > 0 and result["train_ms"] > 0
    assert (result["size"], result["model"], result["device"], result["batch"], result["repeat"]) == (
        "tiny",
        "etrm",
        "cpu",
        2,
        2,
    )
    cfg = bench.SIZES["tiny"].config("etrm")
    assert result["config"] == cfg.to_dict() and result["flops"] == bench.step_flops(cfg, 2)
    assert result["gflops"] == pytest.approx(result["flops"] / (result["infer_ms"] / 1e3) / 1e9)


def test_kernel_floor_sums_one_block_and_counts_the_blocks(monkeypatch):
    timed = []

    def fake_alternate(calls, repeat, **kwargs):
        timed.append(sorted(calls))
        for call in calls.values():
            call()  # each builds a real product at the config's shapes
        return {name: [0.001 * (i + 1)] for i, name in enumerate(calls)}  # 1, 2, 3, 4, 5 ms

    monkeypatch.setattr(timing, "alternate", fake_alternate)
    cfg = bench.SIZES["tiny"].config("trm")
    floor = bench.kernel_floor_ms(cfg, batch=2)
    assert timed == [["attention", "down", "gate_up", "o", "qkv"]]
    assert floor == pytest.approx(15 * cfg.H_cycles * (cfg.L_cycles + 1) * cfg.L_layers)


def test_matmul_gflops_is_a_positive_rate():
    assert bench.matmul_gflops("cpu", n=64, repeat=2) > 0


# --- command line --------------------------------------------------------------------------


def test_cli_json_prints_one_object_with_the_medians(capsys):
    assert main(["bench", "recursion", "--size", "tiny", "--model", "trm", "--repeat", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"infer_ms", "train_ms", "gflops", "config"} <= set(result)
    assert result["config"]["hidden_size"] == 32 and result["model"] == "trm"
    assert result["onednn_linear"] is onednn_linear_available()  # on by default where the build has it


def test_cli_no_onednn_flag_is_reported_and_not_left_off(capsys):
    assert CastedLinear.onednn is True
    assert main(["bench", "recursion", "--size", "tiny", "--repeat", "1", "--no-onednn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["onednn_linear"] is False
    assert CastedLinear.onednn is True


def test_cli_text_reports_both_steps_and_the_matmul_share(capsys, monkeypatch):
    small = bench.matmul_gflops
    monkeypatch.setattr(command, "matmul_gflops", lambda device: small(device, n=64, repeat=1))  # fast, same code path
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "recursion", "--size", "tiny", "--repeat", "1", "--threads", "1", "--matmul"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "size tiny" in out and "1 threads" in out
    assert "inference step:" in out and "training step:" in out and "GFLOP/s" in out
    assert "float32 matmul:" in out and "% of it" in out
    assert "encoder" not in out  # TRM: the FLOP count covers everything timed


def test_cli_text_says_the_encoder_is_timed_but_not_counted(capsys):
    assert main(["bench", "recursion", "--size", "tiny", "--model", "etrm", "--repeat", "1"]) == 0
    assert "the encoder's work is in the ACT steps' time, not in the count" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(capsys):
    assert main(["bench", "recursion", "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "recursion", "--size", "huge"])
    if not torch.cuda.is_available():
        assert main(["bench", "recursion", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err

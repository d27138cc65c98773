"""Two gloo ranks with half a batch each train exactly like one process with the whole batch:
gradients are all-reduced, the loss is scaled by the global batch, metric sums are reduced,
and the puzzle embedding's sign-SGD gathers every rank's rows."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from etrm.config import tiny_config
from etrm.models import build_model
from etrm.synthetic import random_batch
from etrm.training import Trainer, TrainingConfig

GLOBAL_BATCH = 4
STEPS = 3
COMPARED = ("train/lm_loss", "train/q_halt_loss", "train/count", "grad/total_norm_preclip", "grad/decoder_norm_preclip")


def run(model_type: str, rank: int = 0, world_size: int = 1) -> tuple[dict[str, torch.Tensor], list[dict]]:
    torch.manual_seed(0)
    config = tiny_config(model_type, seq_len=16, H_cycles=1, L_cycles=1, max_demos=2, halt_exploration_prob=0.0)
    head = build_model(config)
    if model_type == "trm":
        head.model.inner.puzzle_emb.weights.normal_()
    trainer = Trainer(
        head, TrainingConfig(global_batch_size=GLOBAL_BATCH, warmup_steps=0, lr=1e-3), world_size=world_size
    )
    local = GLOBAL_BATCH // world_size
    records = []
    for step in range(STEPS):
        batch = random_batch(config, GLOBAL_BATCH, seed=step)
        records.append(trainer.step({k: v[rank * local : (rank + 1) * local] for k, v in batch.items()}))
    return {k: v.detach().clone() for k, v in head.state_dict().items()}, records


def _rank_worker(rank: int, init_file: str, model_type: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        result = run(model_type, rank, world_size=2)
        if rank == 0:
            Path(out_file).write_bytes(pickle.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["etrm", "trm"])
def test_two_gloo_ranks_train_like_one_process(model_type, tmp_path):
    out_file = tmp_path / "rank0.pkl"
    # fork, not spawn: the workers skip re-importing torch (seconds on 2 cores).
    mp.start_processes(
        _rank_worker, args=(str(tmp_path / "store"), model_type, str(out_file)), nprocs=2, start_method="fork"
    )
    state, records = pickle.loads(out_file.read_bytes())
    ref_state, ref_records = run(model_type)
    for got, want in zip(records, ref_records):
        assert {k: got[k] for k in COMPARED} == pytest.approx({k: want[k] for k in COMPARED}, rel=1e-5)
    assert state.keys() == ref_state.keys()
    for key in ref_state:
        torch.testing.assert_close(state[key], ref_state[key], atol=1e-6, rtol=1e-5, msg=key)

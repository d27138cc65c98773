"""DDP's gradient scale, in the default run: the trainer divides the loss by the *global* batch,
so the encoder's DDP hook (etrm.experiment1.distributed.sum_gradients_hook, registered by
experiment_run.wrap_encoder) must sum the ranks' gradients. DDP's own reduction averages,
which would leave each rank with 1/world_size of the whole batch's gradient.

Known answer by construction: rank r gets rows [2r, 2r+2) of one seeded 4-row batch, and the
loss is a sum over rows scaled by 1/4 on both sides, so the 2 ranks' summed encoder gradient
is the gradient one process computes on all 4 rows. (The slow torchrun run in
test_experiment_scale goes through the whole command; this is the hook alone, in seconds.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from etrm.config import tiny_config
from etrm.experiment1.distributed import Processes
from etrm.experiment1.loop import wrap_encoder
from etrm.models import build_model
from etrm.synthetic import random_batch

GLOBAL_BATCH = 4
WORLD = 2


def encoder_gradients(rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """One backward of the trainer's loss (summed over this rank's rows, divided by the global
    batch) through the encoder, wrapped in DDP as experiment1 wraps it when world_size > 1."""
    torch.manual_seed(0)
    config = tiny_config("etrm", seq_len=16, H_cycles=1, L_cycles=1, max_demos=2, halt_exploration_prob=0.0)
    head = build_model(config)
    wrap_encoder(head, Processes(rank, world_size, torch.device("cpu")))
    batch = random_batch(config, GLOBAL_BATCH, seed=0)
    local = GLOBAL_BATCH // world_size
    shard = {k: v[rank * local : (rank + 1) * local] for k, v in batch.items()}
    carry = head.initial_carry(shard)
    _, loss, _, _, _ = head(carry, shard)
    (loss / GLOBAL_BATCH).backward()
    encoder = head.model.encoder
    encoder = getattr(encoder, "module", encoder)  # DDP's wrapped module
    return {name: p.grad.detach().clone() for name, p in encoder.named_parameters() if p.grad is not None}


def _rank(rank: int, store: str, out: str) -> None:
    # The parent's OpenMP pool does not survive fork: a forked rank hung in it after the parent
    # had run torch ops, as every pytest worker has.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        grads = encoder_gradients(rank, WORLD)
        if rank == 0:
            Path(out).write_bytes(pickle.dumps(grads))
    finally:
        dist.destroy_process_group()


def test_the_ddp_hook_sums_two_ranks_gradients_to_the_whole_batchs(tmp_path):
    whole = encoder_gradients()
    out = tmp_path / "rank0.pkl"
    # fork: the ranks skip re-importing torch, and torch._dynamo, which DDP imports on first use
    # (a second each on 2 cores), is imported once here.
    import torch._dynamo  # noqa: F401

    mp.start_processes(_rank, args=(str(tmp_path / "store"), str(out)), nprocs=WORLD, start_method="fork")
    summed = pickle.loads(out.read_bytes())
    assert summed.keys() == whole.keys() and whole
    assert any(g.abs().max() > 0 for g in whole.values())  # a zero gradient would hide any scale
    for name, grad in whole.items():
        torch.testing.assert_close(summed[name], grad, atol=1e-6, rtol=1e-5, msg=name)

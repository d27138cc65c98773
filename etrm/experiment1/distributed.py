"""One process or several under `torchrun`, as nanoGPT's train.py and the origin trainer run.

`torchrun --nproc-per-node N -m etrm ...` sets RANK, LOCAL_RANK and WORLD_SIZE in each
process's environment; `start()` then joins the process group (NCCL on CUDA, gloo on
CPU) and pins each rank to its local GPU. Without those variables it is one process and
torch.distributed is never touched. Rank 0 is the master: the only one that writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among `world_size`, and its device."""

    rank: int
    world_size: int
    device: torch.device
    joined: bool = False  # whether start() initialised the process group (so stop() ends it)

    @property
    def master(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.world_size} process{'es' if self.world_size > 1 else ''} on {self.device.type}" + (
            f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        )


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def start(device: str) -> Processes:
    """Join torchrun's process group when launched by it, else one process on `device`."""
    if not launched_by_torchrun():
        return Processes(0, 1, torch.device(device))
    rank, local_rank, world_size = (int(os.environ[name]) for name in TORCHRUN_ENV)
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return Processes(rank, world_size, where, joined=True)
    return Processes(rank, world_size, where)


def stop(processes: Processes) -> None:
    if processes.joined and dist.is_initialized():
        dist.destroy_process_group()


def gather_to_master(value: Any, processes: Processes) -> list[Any] | None:
    """[value of every rank] on rank 0 (picklable values), None elsewhere; [value] alone."""
    if processes.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, value)
    return gathered if processes.master else None


def from_master(value: Any, processes: Processes) -> Any:
    """Rank 0's `value` on every rank (a decision only the master can make, e.g. what to resume)."""
    if processes.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_gradients_hook(state, bucket):  # no annotations: DDP checks them, and they are strings here
    """DDP communication hook that sums gradients over ranks instead of averaging them:
    the trainer divides the loss by the *global* batch size (as the official trainer),
    so the sum is the gradient of the whole batch's mean loss."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda fut: fut.value()[0])

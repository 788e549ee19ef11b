"""Data-parallel training with torch.distributed: one process per device under `torchrun`
(DistributedDataParallel; gloo on the CPU, NCCL on CUDA), or a single process without it.

The run scripts split each global batch into shards, one per process and micro-batch, each shard
with its own random stream: the losses depend on the shard count alone, not on how the shards
are spread over processes (tested with 2 gloo processes against 1 process with 2 micro-batches).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Context:
    rank: int = 0  # this process
    world: int = 1  # processes
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0


SINGLE = Context()  # one process on the CPU


def setup(device: str = "auto") -> Context:
    """The process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), if any;
    `device` "auto" takes this process's GPU when there is one, else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world == 1:
        return Context(0, 1, chosen)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if chosen.type == "cuda" else "gloo", device_id=chosen if chosen.type == "cuda" else None
        )
    return Context(dist.get_rank(), dist.get_world_size(), chosen)


def wrap(model: torch.nn.Module, context: Context) -> torch.nn.Module:
    """`model` under DistributedDataParallel when there are several processes (gradients are
    averaged over them in the backward pass); the model itself otherwise."""
    if context.world == 1:
        return model
    return _Parallel(model, device_ids=[context.device] if context.device.type == "cuda" else None)


class _Parallel(DistributedDataParallel):
    """DDP that still offers the network's adaptive weight `logvar(t)`."""

    def logvar(self, t: torch.Tensor) -> torch.Tensor:
        return self.module.logvar(t)


def mean(value: torch.Tensor, context: Context) -> torch.Tensor:
    """The mean of a tensor over the processes."""
    if context.world == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / context.world


def gather(value: object, context: Context) -> list:
    """Every process's `value` (a picklable object), in rank order, on every process."""
    if context.world == 1:
        return [value]
    out: list = [None] * context.world
    dist.all_gather_object(out, value)
    return out


def finish(context: Context) -> None:
    if context.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: Context) -> None:
    """Wait until every process gets here (e.g. until the main one has written a checkpoint)."""
    if context.world > 1:
        dist.barrier()

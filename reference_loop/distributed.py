"""Data-parallel training for the reference loop: DDP under torchrun, nothing of our own.

`diagnose run --nproc-per-node N` starts N copies of `diagnose run` through
`torch.distributed.run`; each finds torchrun's `RANK`/`WORLD_SIZE`/`LOCAL_RANK` variables
and `setup()` joins the process group (gloo on CPU, nccl on CUDA, one GPU per local rank).
What changes against one process, and why:

- Every rank builds the same data and the same initial weights (same seed; DDP also
  broadcasts rank 0's weights when it wraps the model), then reseeds torch with
  `seed + rank`, so dropout masks differ between ranks as they would on separate GPUs.
- Training data: a `DistributedSampler` (shuffled by `seed` and the epoch, `set_epoch`
  each epoch, last incomplete shard dropped) gives each rank its own part of every epoch;
  an epoch is one pass over the data by all ranks together.
- Validation: each rank scores every N-th sample (no padding, so no sample counts twice)
  with the unwrapped model, and the sums (loss, correct, count) are all-reduced, so every
  rank gets the same exact validation loss and makes the same early-stop and best-model
  decision.
- Only rank 0 prints progress and writes checkpoints; a checkpoint holds every rank's RNG
  states (`rng_ranks`, gathered at save time), so `--resume` with the same number of
  ranks continues exactly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Ranks:
    """Ranks from torchrun's variables, or from an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(device_type: str) -> tuple[Ranks, bool]:
    """Join the process group torchrun set up the variables for; (ranks, whether this call
    created the group and must destroy it). A no-op in a single process."""
    ranks = from_env()
    if not ranks.distributed or not dist.is_available() or dist.is_initialized():
        return ranks, False
    if device_type == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return from_env(), True


def teardown(created: bool, ok: bool) -> None:
    """Wait for every rank (only after a clean finish: a dead peer would hang the barrier),
    then leave the group if `setup` created it."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok:
        try:
            dist.barrier()
        except RuntimeError:  # a peer that failed after this rank finished: our result stands
            pass
    if created:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when running with several ranks."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module DDP wraps (or `model` itself)."""
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum `values` over the ranks (in place; a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values)
    return values


def gather_objects(obj):
    """Every rank's `obj`, in rank order ([obj] in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

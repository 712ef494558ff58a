"""Device-side numbers, read by the host one step later without a device sync.

Per step the recorder gathers a handful of 0-d device tensors (loss, loss scale, the
pre-clip norm) and per-parameter norm vectors. `pack` concatenates them into one
float32 vector and starts one non-blocking copy into a pinned host buffer, with a CUDA
event behind it. `InFlight.ready()` asks the event (no sync); the host reads the values
when the copy has landed, usually at the next step. On CPU everything is synchronous by
nature, so the copy is a plain read.

Sharded tensors (DTensor: FSDP2's `fully_shard` parameters and their gradients, tensor
parallelism) are read through `to_local()`: the norms are this rank's shard's, computed
with no collective. `shard_info` records, per parameter, how many distinct shards the
ranks hold, so the reader can put the global norm back together from every rank's local
one (diagnose/rundir/shards.py).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (no communication); any other tensor as it is."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) and hasattr(tensor, "placements") else tensor


def shard_info(tensor: torch.Tensor) -> dict:
    """`{"shards": N}` for a DTensor: the number of distinct pieces its mesh splits it into
    (the product of the sizes of the mesh dimensions it is sharded on; 1 when replicated
    everywhere). Every rank holds one piece, so world_size / N ranks hold each piece, and
    the global squared norm is N / world_size times the sum of the ranks' local squared
    norms. `{}` for an ordinary tensor (every rank has all of it)."""
    placements = getattr(tensor, "placements", None)
    mesh = getattr(tensor, "device_mesh", None)
    if placements is None or mesh is None:
        return {}
    shards = 1
    for dim, placement in enumerate(placements):
        if placement.is_shard():
            shards *= int(mesh.size(dim))
        elif not placement.is_replicate():  # Partial: the local values are partial sums
            return {"shards": None}
    return {"shards": shards}


def _partial(tensor: torch.Tensor) -> bool:
    return any(not (p.is_shard() or p.is_replicate()) for p in getattr(tensor, "placements", ()))


@torch.no_grad()
def grad_norms(params: list[torch.Tensor]) -> tuple[list[int], torch.Tensor | None]:
    """L2 norm of each parameter's gradient, on device, as one float32 vector.

    Returns the positions (in `params`) that had a gradient, and the norms of those.
    `torch._foreach_norm` runs a few fused kernels for all tensors at once; nothing here
    reads a value back to the host.
    """
    present = [i for i, p in enumerate(params) if p.grad is not None]
    if not present:
        return present, None
    grads = [local(params[i].grad) for i in present]
    grads = [g.coalesce()._values() if g.is_sparse else g for g in grads]
    return present, _stack_norms(grads)


@torch.no_grad()
def tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """L2 norm of each tensor (weights), on device, as one float32 vector."""
    if not tensors:
        return None
    return _stack_norms([local(t.detach()) for t in tensors])


def _stack_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    device = tensors[0].device
    if all(t.device == device for t in tensors):
        try:
            norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
        except (TypeError, RuntimeError):  # older torch: no dtype argument
            norms = torch._foreach_norm([t.float() for t in tensors], 2)
        return torch.stack(norms)
    # Parameters spread over devices (model parallelism): norm per device, gather on one.
    return torch.stack([torch.linalg.vector_norm(t.float()).to(device) for t in tensors])


@dataclass
class InFlight:
    """One step's packed device values on their way to the host."""

    host: torch.Tensor
    event: Any  # torch.cuda.Event or None on CPU
    layout: dict[str, tuple[int, int]]
    meta: dict = field(default_factory=dict)

    def ready(self) -> bool:
        """Whether the copy has landed (never blocks)."""
        return self.event is None or self.event.query()

    def values(self) -> dict[str, np.ndarray]:
        """The host values by name (waits for the copy if it has not landed)."""
        if self.event is not None:
            self.event.synchronize()
        flat = self.host.numpy()
        return {name: flat[a:b].copy() for name, (a, b) in self.layout.items()}


class HostCopier:
    """Packs named device tensors and copies them to the host asynchronously.

    Pinned host buffers come from a free list: allocating pinned memory every step
    would cost more than the copy. A buffer goes back to the list once its values were
    read (`release`), so a buffer is never overwritten while its copy is in flight.
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []

    @torch.no_grad()
    def pack(self, parts: dict[str, torch.Tensor | None], meta: dict) -> InFlight:
        layout: dict[str, tuple[int, int]] = {}
        pieces: list[torch.Tensor] = []
        device = None
        offset = 0
        for name, tensor in parts.items():
            if tensor is None:
                continue
            # DTensor norms of sharded gradients are Partial: their local value is this
            # rank's shard's norm, what is recorded. A Partial total (clip_norm) would be
            # labelled global while local: left out (clip_grad_norm_ returns a replicated one).
            if name == "clip_norm" and _partial(tensor):
                continue
            tensor = local(tensor)
            if device is None:
                device = tensor.device
            flat = tensor.detach().reshape(-1).float()
            if flat.device != device:
                flat = flat.to(device)
            layout[name] = (offset, offset + flat.numel())
            offset += flat.numel()
            pieces.append(flat)
        if not pieces:
            return InFlight(torch.empty(0), None, {}, meta)
        packed = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        if packed.device.type != "cuda":
            return InFlight(packed.to("cpu").clone(), None, layout, meta)
        base = self._take(packed.numel())
        host = base[: packed.numel()]
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        flight = InFlight(host, event, layout, meta)
        flight.meta["_base"] = base
        return flight

    def release(self, flight: InFlight) -> None:
        """Return a landed record's pinned buffer to the free list."""
        base = flight.meta.pop("_base", None)
        if base is not None and len(self._free) < 32:
            self._free.append(base)

    def _take(self, numel: int) -> torch.Tensor:
        for i, buf in enumerate(self._free):
            if buf.numel() >= numel:
                return self._free.pop(i)
        return torch.empty(max(numel, 256), dtype=torch.float32, pin_memory=True)

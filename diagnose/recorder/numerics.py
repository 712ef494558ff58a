"""Device-side numbers, read by the host a few steps later without a device sync.

Per step the recorder gathers a handful of 0-d device tensors (loss, loss scale, the
pre-clip norm) and per-parameter norm vectors. `pack` concatenates them into one float32
vector and starts one non-blocking copy into a pinned host buffer, with a CUDA event
behind it. `InFlight.ready()` asks the event (no sync); the host reads the values once
the copy has landed, when the recorder finishes a batch of step records. On CPU
everything is synchronous by nature, so the copy is a plain read.

Sharded tensors (DTensor: FSDP2's `fully_shard` parameters and their gradients, tensor
parallelism) are read through `to_local()`: the norms are this rank's shard's, computed
with no collective. `shard_info` records, per parameter, how many distinct shards the
ranks hold, so the reader can put the global norm back together from every rank's local
one (diagnose/rundir/shards.py).
"""
from __future__ import annotations

import time
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
    created: float = field(default_factory=time.perf_counter)

    def ready(self) -> bool:
        """Whether the copy has landed (never blocks)."""
        return self.event is None or self.event.query()

    def values(self) -> dict[str, np.ndarray]:
        """The host values by name (waits for the copy if it has not landed): views of
        one private array (a copy of a pinned buffer, which is then reused)."""
        flat = self.host.numpy()
        if self.event is not None:
            self.event.synchronize()
            flat = flat.copy()
        return {name: flat[a:b] for name, (a, b) in self.layout.items()}


_CURRENT_STREAM = getattr(torch._C, "_cuda_getCurrentStream", None)
"""(stream id, device index, device type) of a device's current stream: one C call."""


class HostCopier:
    """Packs named device tensors and copies them to the host asynchronously.

    One `cat` of the parts (0-d scalars and a few vectors, flattened as views; cast only
    when not float32), one non-blocking copy into a pinned host buffer of exactly that
    size, and an event recorded behind it on a kept stream object. Every CUDA call here
    costs host time on a launch-bound step (`python3 bench/cuda_call_costs.py` on a lent
    H200 host: a slice view 41.5 us, `cat` with two reshapes 60.5 us, the copy 49.8 us,
    `Event()` + `record()` 54.7 us against 3.6 us for `record(stream)` on a kept stream;
    `torch._foreach_copy_` into a reused staging buffer, tried instead of the `cat`, cost
    91 us), so the calls are as few as the packing allows.

    Pinned host buffers (with their events) are kept by size in a free list: allocating
    pinned memory every step would cost more than the copy, and a step's sizes repeat
    (a plain step, a step with weight norms, one with update norms). A buffer goes back
    to the list once its values were read (`release`), so it is never overwritten while
    its copy is in flight.
    """

    def __init__(self) -> None:
        self._free: dict[int, list[tuple[torch.Tensor, Any]]] = {}
        self._stream: tuple[Any, Any] = (None, None)
        """(stream id, torch.cuda.Stream) of the last pack: `Event.record()` with no stream
        looks the current one up in Python (see the class docstring)."""

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
            if type(tensor) is not torch.Tensor:  # a subclass (DTensor): its local shard
                if name == "clip_norm" and _partial(tensor):
                    continue
                tensor = local(tensor)
            flat = tensor if tensor.dim() == 1 else tensor.reshape(-1)
            if flat.dtype is not torch.float32:
                flat = flat.float()
            where = flat.get_device()  # an int: cheaper than .device, which makes an object
            if device is None:
                device = where
            elif where != device:
                flat = flat.to(pieces[0].device)
            n = flat.numel()
            layout[name] = (offset, offset + n)
            offset += n
            pieces.append(flat)
        if not pieces:
            return InFlight(torch.empty(0), None, {}, meta)
        packed = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        if packed.requires_grad:  # the parts are detached or made under no_grad: a safeguard
            packed = packed.detach()
        if packed.device.type != "cuda":
            return InFlight(packed.to("cpu", copy=True), None, layout, meta)
        host, event = self._take(offset)
        host.copy_(packed, non_blocking=True)
        event.record(self._current_stream(packed.device))
        return InFlight(host, event, layout, meta)

    def _current_stream(self, device: torch.device) -> Any:
        """The current CUDA stream of `device`: its id from one C call, the Stream object
        made again only when the id changed (a `torch.cuda.stream(...)` block)."""
        lookup = _CURRENT_STREAM
        if lookup is None:  # not in this torch: the public call every time
            return torch.cuda.current_stream(device)
        ident = lookup(device.index if device.index is not None else torch.cuda.current_device())
        if ident != self._stream[0]:
            self._stream = (ident, torch.cuda.current_stream(device))
        return self._stream[1]

    def release(self, flight: InFlight) -> None:
        """Return a landed record's pinned buffer (and its event) to the free list. Call
        it once, after `values()`."""
        if flight.event is not None:
            free = self._free.setdefault(flight.host.numel(), [])
            if len(free) < 64:
                free.append((flight.host, flight.event))

    def _take(self, numel: int) -> tuple[torch.Tensor, Any]:
        free = self._free.get(numel)
        if free:
            return free.pop()
        if len(self._free) > 16:  # sizes keep changing (a varying number of input checks)
            self._free.clear()
        return torch.empty(numel, dtype=torch.float32, pin_memory=True), torch.cuda.Event()

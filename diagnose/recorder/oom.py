"""An out-of-memory error, described for the `oom` event: what was asked, what was in use.

Recorded where the recorder sees the error go by: `Tensor.backward` (the global wrapper in
hooks.py; the event is written even when the loop catches the error and skips the batch),
and the exception that ends a `with Monitor(...)` block, the zero-code mode's script or
`diagnose run`'s loop (`monitor.record_exception`). One error is recorded once.

The memory state comes from the CUDA caching allocator's counters (allocated, reserved,
peak allocated; no device sync) and the device's capacity; `requested_bytes` and
`free_bytes` are read from torch's message ("Tried to allocate 2.00 GiB. GPU 0 has a total
capacity of 79.15 GiB of which 1.06 GiB is free."). Off CUDA those fields are absent.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from diagnose.recorder import system

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = r"([0-9]+(?:\.[0-9]+)?) ?(B|KiB|MiB|GiB|TiB)"
_REQUESTED = re.compile(r"Tried to allocate " + _SIZE)
_FREE = re.compile(r"of which " + _SIZE + " is free")
_MARK = "_diagnose_oom_recorded"


def is_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA; `torch.cuda.OutOfMemoryError` is the same class), or
    another allocator's RuntimeError that says it ran out of memory."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text)


def first_sighting(exc: BaseException) -> bool:
    """True the first time `exc` is seen here (so one error makes one event)."""
    if getattr(exc, _MARK, False):
        return False
    try:
        setattr(exc, _MARK, True)
    except AttributeError:  # an exception type without a __dict__: no dedup, still recorded
        pass
    return True


def describe(exc: BaseException, device: torch.device | None, where: str) -> dict[str, Any]:
    """The fields of an `oom` event."""
    message = str(exc)
    fields: dict[str, Any] = {"where": where, "type": type(exc).__name__, "message": message[:2000]}
    for name, pattern in (("requested_bytes", _REQUESTED), ("free_bytes", _FREE)):
        found = pattern.search(message)
        if found:
            fields[name] = int(float(found[1]) * _UNITS[found[2]])
    if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    allocated, reserved, peak = system.cuda_memory(device)
    if allocated is not None:
        fields.update(allocated_bytes=allocated, reserved_bytes=reserved, peak_bytes=peak)
        try:
            fields["total_bytes"] = torch.cuda.get_device_properties(device).total_memory
        except (RuntimeError, AssertionError, AttributeError):
            pass
    return fields

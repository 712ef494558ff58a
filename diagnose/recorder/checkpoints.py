"""What a `torch.save` call saved, as the fields of a `checkpoint` event.

The recorder wraps `torch.save` (diagnose/recorder/hooks.py) while it is active; each
save becomes a `checkpoint` event with the path and, for a dict, its top-level keys (a
bare `state_dict`, all values tensors, is marked `tensors_only`), so a report can say
that the run's checkpoints lack the optimizer state (rule `checkpoint-incomplete`).
No tensor is read: describing a save costs microseconds.
"""
from __future__ import annotations

import os
from typing import Any

import torch

MAX_KEYS = 64


def is_storage(obj: Any) -> bool:
    """A tensor storage: what `pickle` of a tensor passes to `torch.save` (TypedStorage's
    `__reduce__` saves into a BytesIO), e.g. inside `dist.all_gather_object`. Not a
    checkpoint, and not the user's call."""
    return isinstance(obj, (torch.TypedStorage, torch.UntypedStorage))


def describe_checkpoint(obj: Any, f: Any) -> dict:
    """The `checkpoint` event's fields for `torch.save(obj, f)` (no tensor is read)."""
    path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else f"<{type(f).__name__}>"
    record: dict[str, Any] = {"path": str(path), "object": type(obj).__name__, "source": "torch.save"}
    if isinstance(obj, dict):
        keys = [str(k) for k in obj.keys()]
        record["keys"] = sorted(keys)[:MAX_KEYS]
        record["n_keys"] = len(keys)
        record["tensors_only"] = bool(obj) and all(isinstance(v, torch.Tensor)
                                                   for v in obj.values())
    return record

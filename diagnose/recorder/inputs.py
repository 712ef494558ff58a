"""Finite checks of the floating-point tensors of each training batch (`nonfinite-inputs`).

A batch is whatever the loader yields (`Monitor.loader`, the zero-code mode's DataLoader
wrapper): a tensor, or tuples, lists, dicts, namedtuples and dataclasses of them, walked
to depth 4. Each floating-point tensor is named by its path in the batch (`batch[0]`,
`batch["image"]`, `batch.pixels`); at most `MAX_TENSORS` per batch are checked. Integer
and bool tensors (token ids, labels, boolean masks) cannot hold NaN and are skipped.

The check never syncs a device and never writes to the batch (everything under no_grad):
- a tensor on the CPU (the usual loader output, before `.to(device)`): one `sum` in
  float32 (~25 GB/s on one core; `isfinite().all()` is ~50x slower). A finite sum means
  every value is finite; only a non-finite sum (rare: a real NaN/Inf, or a float32
  overflow of huge finite values) pays for `aminmax` to say what it holds. On the CPU
  the values are there at once, so nothing waits;
- a tensor on an accelerator: one `aminmax` kernel (NaN propagates into both; +Inf shows
  as the max, -Inf as the min); the pairs are packed with the step's other device values
  (HostCopier) and read back with the step's record (no sync).

What is recorded: for each step whose batches held a non-finite value, the tensors with
`nan` / `posinf` / `neginf` flags and their `max` when it is finite. One pattern is not
recorded at all, because it is a legitimate *additive mask*: a tensor whose only
non-finite values are -Inf and whose largest value is exactly 0 (values in {0, -Inf}, or
-Inf and non-positive scores), e.g. `torch.full((L, L), float("-inf")).triu(1)` built by a
collate function. The rule (diagnose/rules/data/nonfinite_inputs.py) decides the rest.

Loops without a watched loader (batches sliced by hand from an in-memory tensor,
`x[i:i + 32]`, a generator of tensors) are covered by the model instead: until a watched
loader has yielded a training batch, the positional tensor arguments of each training
forward of a watched model (autograd on, training mode) that do not require grad are
checked the same way, named `model0.input[0]` (`model0.input["pixel_values"]` for a
keyword argument, as `Monitor` sees them). Tensors that require grad are the output of
another model (a GAN's discriminator fed the generator's samples): a NaN there is the
upstream model's, not the data's, so they are skipped. The zero-code mode's global hooks
see keyword arguments only after the call (`Recorder.on_forward_kwargs`): same checks.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

MAX_TENSORS = 16
"""Floating-point tensors checked per batch (the first ones in the batch's order)."""
MAX_DEPTH = 4
MAX_ITEMS = 256
"""Objects of a batch looked at, at most (tensors, containers and anything else)."""
FORWARD_KEY = "forward"
"""The `key` of checks made on a model's forward inputs (not a loader's batches)."""


def float_tensors(batch: Any, path: str = "batch", depth: int = 0,
                  out: list | None = None, seen: list | None = None) -> list[tuple[str, torch.Tensor]]:
    """(path, tensor) of every non-empty floating-point tensor in `batch`, in order (at most
    `MAX_TENSORS`, looking at no more than `MAX_ITEMS` objects: a batch that carries a list
    of 10,000 file names costs no more than a small one)."""
    out = [] if out is None else out
    seen = [0] if seen is None else seen
    seen[0] += 1
    if len(out) >= MAX_TENSORS or seen[0] > MAX_ITEMS:
        return out
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point() and batch.numel() > 0:
            out.append((path, batch))
        return out
    if depth >= MAX_DEPTH or isinstance(batch, (str, bytes)):
        return out
    if isinstance(batch, Mapping):
        items = ((f"{path}[{k!r}]" if not isinstance(k, str) else f'{path}["{k}"]', v)
                 for k, v in batch.items())
    elif isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        items = ((f"{path}.{f}", getattr(batch, f)) for f in batch._fields)
    elif isinstance(batch, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(batch))
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        items = ((f"{path}.{f.name}", getattr(batch, f.name)) for f in dataclasses.fields(batch))
    else:
        return out
    for sub_path, value in items:
        float_tensors(value, sub_path, depth + 1, out, seen)
        if len(out) >= MAX_TENSORS or seen[0] > MAX_ITEMS:
            break
    return out


def describe(path: str, low: float, high: float) -> dict | None:
    """What a tensor with this min and max holds, or None when it is finite (or an
    additive mask: only -Inf, largest value exactly 0)."""
    nan = math.isnan(low) or math.isnan(high)
    posinf = not nan and high == math.inf
    neginf = not nan and low == -math.inf
    if not (nan or posinf or neginf):
        return None
    if neginf and not posinf and high == 0.0:
        return None  # an additive mask: values in {0, -inf}
    return {"path": path, "nan": nan, "posinf": posinf, "neginf": neginf,
            "max": high if math.isfinite(high) else None}


class InputChecks:
    """Checks of the batches fetched since the last optimizer step, until it takes them."""

    def __init__(self) -> None:
        self._host: list[tuple[Any, dict]] = []
        """(key, finding) of CPU tensors found non-finite."""
        self._device: list[tuple[Any, list[str], torch.Tensor]] = []
        """(key, paths, [min0, max0, min1, max1, ...] float32 on the device)."""
        self.batches = 0
        self.loader_batches = 0
        """Batches from a watched loader (`add`); while 0, `add_forward_inputs` checks."""
        self.failed: str | None = None
        """Why the checks stopped (set once, on the first failure)."""

    def add(self, batch: Any, key: Any = None) -> None:
        """Check one training batch; `key` names its loader (see `keep_only`). A failure
        (an unusual tensor subclass) switches the checks off, not the recorder."""
        if self.failed is not None:
            return
        self.loader_batches += 1
        try:
            self._add(float_tensors(batch), key)
        except Exception as exc:  # noqa: BLE001 - the checks are optional, the record is not
            self.failed = f"{type(exc).__name__}: {exc}"[:500]

    def add_forward_inputs(self, name: str, args: tuple, kwargs: dict | None = None) -> None:
        """Check the data tensors passed to a training forward of model `name`, when no
        watched loader delivers the batches (see the module docstring)."""
        if self.failed is not None or self.loader_batches:
            return
        try:
            found = float_tensors(args, f"{name}.input")
            if kwargs:
                found += float_tensors(kwargs, f"{name}.input", out=[])[:MAX_TENSORS - len(found)]
            found = [(path, t) for path, t in found if not t.requires_grad]
            self._add(found, FORWARD_KEY)
        except Exception as exc:  # noqa: BLE001 - the checks are optional, the record is not
            self.failed = f"{type(exc).__name__}: {exc}"[:500]

    def _add(self, found: list[tuple[str, torch.Tensor]], key: Any) -> None:
        # every tensor is detached first: no graph is recorded without a no_grad block
        # (entering one costs more than the check of a small batch)
        if not found:
            return
        self.batches += 1
        paths: list[str] = []
        pairs: list[torch.Tensor] = []
        for path, tensor in found:
            tensor = tensor.detach()
            if tensor.device.type == "cpu":
                total = float(tensor.sum(dtype=torch.float32))
                if math.isfinite(total):
                    continue
                low, high = torch.aminmax(tensor)
                finding = describe(path, float(low), float(high))
                if finding is not None:
                    self._host.append((key, finding))
            else:
                low, high = torch.aminmax(tensor)
                paths.append(path)
                pairs.append(torch.stack([low.float(), high.float()]))
        if pairs:
            self._device.append((key, paths, torch.cat(pairs)))

    def keep_only(self, key: Any) -> None:
        """Drop what came from other loaders (the zero-code mode learns which loader is the
        training one at the first optimizer step)."""
        self._host = [h for h in self._host if h[0] in (key, FORWARD_KEY)]
        self._device = [d for d in self._device if d[0] in (key, FORWARD_KEY)]

    def take(self) -> tuple[list[dict], list[str], torch.Tensor | None]:
        """What the pending batches found: host findings, and the device pairs with their
        paths (read with `findings_from` once copied). Empties the list."""
        host = [finding for _, finding in self._host]
        paths = [p for _, ps, _ in self._device for p in ps]
        tensors = [t for _, _, t in self._device]
        device = None
        if tensors:
            first = tensors[0].device
            device = torch.cat([t.to(first) for t in tensors]) if len(tensors) > 1 else tensors[0]
        self._host, self._device = [], []
        return host, paths, device


def findings_from(paths: list[str], values: Any) -> list[dict]:
    """Findings of the device pairs once on the host (`values`: min0, max0, min1, ...)."""
    out = []
    for i, path in enumerate(paths):
        finding = describe(path, float(values[2 * i]), float(values[2 * i + 1]))
        if finding is not None:
            out.append(finding)
    return out

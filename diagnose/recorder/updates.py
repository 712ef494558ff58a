"""Update norms ‖Δw‖ per parameter on sampled steps (for `update-ratio`).

On a sampled step (the weight-norm steps: `step % param_every == 0`, 25 by default) the
recorder copies the trainable weights just before the first optimizer step of the step
(`before`), and when the step closes (the next step's first call) subtracts the weights
now from the copy in place and takes the norms (`after`): one float32 vector on the
device, copied to the host with the step's other values, a step later. Together with
the weight norms of the same step (param_norms.arrow) it gives ‖Δw‖/‖w‖.

Cost: on sampled steps only, one copy of the weights (fused `torch._foreach_mul` on an
accelerator, `clone` per tensor on the CPU, which is faster there), one
fused in-place subtraction and one `_foreach_norm`; the copy lives from the optimizer step
to the step's end. Other steps cost nothing. Nothing here reads a device value.

Memory budget: the copy is taken only if the trainable weights fit in
`COPY_BUDGET_FRACTION` (5%) of the device's memory (CUDA: the card's total memory; CPU:
physical RAM): 7 GB on an H200 (1.7B float32 / 3.5B bf16 parameters), 1.2 GB on a 24 GB
card. Past it, update norms are not recorded and a `not_recorded` event says so once.
"""
from __future__ import annotations

import os

import torch

from diagnose.recorder import numerics

COPY_BUDGET_FRACTION = 0.05
"""Largest share of the device's memory the weight copy may take."""


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of `device` (None when unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None
    return None


class UpdateSampler:
    """Holds the weight copy of one sampled step."""

    def __init__(self) -> None:
        self._index: list[int] = []
        self._copy: list[torch.Tensor] | None = None
        self.refused: str | None = None
        """Why copies are not taken (set once, from the first sampled step on)."""
        self._checked = 0
        """The number of weights the memory budget was last checked for."""

    def _allowed(self, params: list[torch.Tensor], index: list[int]) -> bool:
        if self._checked == len(index) or self.refused is not None:  # checked for this table
            return self.refused is None
        self._checked = len(index)  # again if the parameter table grows (a late model)
        size = sum(params[i].numel() * params[i].element_size() for i in index)
        total = device_memory_bytes(params[index[0]].device)
        if total is not None and size > COPY_BUDGET_FRACTION * total:
            self.refused = (f"the trainable weights ({size / 2**30:.2f} GiB) exceed "
                            f"{COPY_BUDGET_FRACTION:.0%} of the device's memory "
                            f"({total / 2**30:.1f} GiB): update norms are not recorded")
        return self.refused is None

    def before(self, params: list[torch.Tensor]) -> None:
        """Copy the trainable weights (call just before the optimizer step). A failure
        (an unusual parameter type) switches update norms off, not the recorder."""
        self._copy = None
        if self.refused is not None:
            return
        try:
            self._before(params)
        except Exception as exc:  # noqa: BLE001 - update norms are optional, the record is not
            self._copy = None
            self.refused = f"update norms switched off: {type(exc).__name__}: {exc}"[:500]

    @torch.no_grad()
    def _before(self, params: list[torch.Tensor]) -> None:
        index = [i for i, p in enumerate(params)
                 if p.requires_grad and p.layout == torch.strided and p.numel() > 0]
        if not index or not self._allowed(params, index):
            return
        weights = [params[i].detach() for i in index]
        if weights[0].device.type == "cpu":  # no kernel launches to save: a plain copy is faster
            self._copy = [w.clone() for w in weights]
            self._index = index
            return
        try:
            self._copy = list(torch._foreach_mul(weights, 1.0))  # one fused launch per dtype
        except (RuntimeError, TypeError):  # mixed devices or dtypes the fused op refuses
            self._copy = [w.clone() for w in weights]
        self._index = index

    def after(self, params: list[torch.Tensor]) -> tuple[list[int], torch.Tensor] | None:
        """(positions, ‖w_before - w_now‖ per position) on the device; frees the copy."""
        if self._copy is None:
            return None
        copy, index, self._copy = self._copy, self._index, None
        try:
            return self._after(params, copy, index)
        except Exception as exc:  # noqa: BLE001
            self.refused = f"update norms switched off: {type(exc).__name__}: {exc}"[:500]
            return None

    @torch.no_grad()
    def _after(self, params: list[torch.Tensor], copy: list[torch.Tensor],
               index: list[int]) -> tuple[list[int], torch.Tensor]:
        now = [params[i].detach() for i in index]
        try:
            torch._foreach_sub_(copy, now)
        except (RuntimeError, TypeError):
            for c, w in zip(copy, now):
                c.sub_(w)
        return index, numerics.tensor_norms(copy)

"""Exponential moving average of a model's weights, swapped in for evaluation.

Why not `torch.optim.swa_utils.AveragedModel`: it keeps a second module, so evaluation
would run on a model the recorder does not watch. Here the averaged tensors are copied
into the trained model for the evaluation and the trained ones copied back after, so
every forward pass goes through the one watched model.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn as nn


class EMA:
    """Shadow copies of the floating-point entries of `model.state_dict()` (parameters and
    buffers such as BatchNorm's running statistics), updated after each optimizer step.

    The effective decay after n updates is min(decay, (1 + n) / (10 + n)): early on the
    average follows the weights closely instead of remembering the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1); got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        # One fused kernel over all tensors: shadow += (1 - d) * (current - shadow).
        torch._foreach_lerp_(list(self.shadow.values()), [current[k] for k in self.shadow], 1.0 - d)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Evaluate with the averaged weights; the trained weights are restored on exit.
        Costs one copy of the model's floating-point state."""
        current = model.state_dict()  # detached views of the live tensors
        backup = {k: current[k].clone() for k in self.shadow}
        with torch.no_grad():
            for k, v in self.shadow.items():
                current[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in backup.items():
                    current[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's parameters and buffers")
        self.decay, self.updates = state["decay"], state["updates"]
        with torch.no_grad():
            for k, v in state["shadow"].items():
                self.shadow[k].copy_(v)

"""Optimizer and learning-rate schedule of the reference loop.

Per-iteration schedules (OneCycleLR, warm-up + cosine) are laid out over the run's total
optimizer steps and stepped after every optimizer step; per-epoch ones (StepLR,
CosineAnnealingLR) after each epoch's validation; ReduceLROnPlateau on the val loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import (CosineAnnealingLR, LambdaLR, OneCycleLR, ReduceLROnPlateau,
                                      StepLR)


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] = frozenset()) -> list[dict]:
    """Two groups: weight matrices, conv kernels and embeddings decay; biases and norm
    weights (1-D) do not - decaying them only pulls BatchNorm/LayerNorm scales to 0.
    `exclude` holds ids of parameters to leave out (the params-not-updated injection)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad and id(p) not in exclude:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    lr = cfg.lr
    probe = {id(p) for p in model.probe.parameters()}
    special = "params-not-updated" in cfg.inject or "update-ratio" in cfg.inject
    groups = param_groups(model, cfg.weight_decay, probe if special else set())
    if "update-ratio" in cfg.inject:  # the probe layer alone at a far too high LR
        from reference_loop.injections import THRASH_LR_FACTOR

        groups.append({"params": list(model.probe.parameters()), "weight_decay": cfg.weight_decay,
                       "lr": lr * THRASH_LR_FACTOR})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas)


class WarmupCosine:
    """LR multiplier for LambdaLR: linear warm-up to 1 over `warmup` steps, then a cosine
    down to `min_frac` at `total` steps. A callable object, not a lambda, so LambdaLR's
    state_dict saves its numbers and a resumed run restores them.

    It is never exactly 0 inside the run (step < total), so healthy runs take no zero-LR
    steps. `hold_zero_after` (the zero-lr-steps injection) returns 0 from that step on.
    """

    def __init__(self, warmup: int, total: int, min_frac: float = 0.0, hold_zero_after: int | None = None):
        self.warmup, self.total, self.min_frac = warmup, total, min_frac
        self.hold_zero_after = hold_zero_after

    def __call__(self, step: int) -> float:
        if self.hold_zero_after is not None and step >= self.hold_zero_after:
            return 0.0
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.min_frac + (1 - self.min_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, total_steps: int, epochs: int):
    """The configured scheduler, or None. `total_steps`: optimizer steps in the run;
    `epochs`: epochs it will run (per-epoch schedules are laid out over these)."""
    kind = cfg.scheduler
    if kind == "onecycle":
        # OneCycleLR divides by the length of each phase: a phase under 2 steps (a very
        # short run, `--steps 10`) would divide by zero, so the warm-up gets at least 2.
        pct = min(max(cfg.warmup_frac, 2.0 / max(total_steps, 1)), 0.5)
        # max_lr per group: a group's own LR (the update-ratio injection) keeps its ratio.
        max_lr = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(total_steps, 4), pct_start=pct)
    if kind == "warmup-cosine":
        # zero-lr-steps: the schedule is laid out over half the run and then holds 0.
        horizon = max(total_steps // 2, 1) if "zero-lr-steps" in cfg.inject else total_steps
        warmup = int(cfg.warmup_frac * horizon)
        hold = horizon if "zero-lr-steps" in cfg.inject else None
        return LambdaLR(optimizer, WarmupCosine(warmup, horizon, cfg.min_lr_frac, hold))
    if kind == "step":
        return StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if kind == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs, eta_min=cfg.lr * cfg.min_lr_frac)
    if kind == "plateau":
        return ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return None

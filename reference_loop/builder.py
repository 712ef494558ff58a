"""Everything the loop trains with, built from a TrainConfig before any step.

`build(config)` is also the entry point for tests and the pytest plugin that want the
reference model, optimizer, scheduler, scaler and loaders without the loop.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from reference_loop import injections
from reference_loop.config import TrainConfig
from reference_loop.distributed import Ranks, from_env, wrap
from reference_loop.data import TaskData, build_datasets, build_loaders
from reference_loop.model import build_model
from reference_loop.optim import build_optimizer, build_scheduler


@dataclass
class Built:
    """Everything `train` trains with, before any step: also what tests and the pytest
    plugin need to drive a loop of their own."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    """An LRScheduler, ReduceLROnPlateau, or None."""
    scaler: torch.amp.GradScaler
    """Always present; disabled (a pass-through) unless amp is fp16."""
    train_loader: DataLoader
    val_loader: DataLoader
    data: TaskData
    device: torch.device
    amp_dtype: torch.dtype | None
    """Autocast dtype, or None without autocast."""
    steps_per_epoch: int
    """Optimizer steps per epoch (micro-batches // accum_steps)."""
    total_steps: int
    """Optimizer steps in the whole run (epochs x steps_per_epoch, capped by max_steps)."""
    epochs: int
    """Epochs the run will start (the last may be partial under max_steps)."""
    ranks: Ranks = field(default_factory=Ranks)
    """This process's rank and the world size (one rank without torchrun). With several
    ranks `model` is wrapped in DistributedDataParallel (`distributed.unwrap` gives the
    module) and the loaders hold this rank's part of the data."""

    @property
    def amp(self) -> str:
        """The effective precision: "off", "bf16" or "fp16"."""
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self):
        # Disabled autocast still needs a dtype the device accepts (float32 warns on CPU).
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """auto: off on CPU; on CUDA bf16 where supported, else fp16 (+ GradScaler)."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build(config: TrainConfig) -> Built:
    """Data, model, optimizer, scheduler and scaler for `config`, seeded; no step taken.

    In a process group of several ranks (see reference_loop.distributed): this rank's
    GPU (cuda:LOCAL_RANK), this rank's part of the data, the model in DDP, and torch
    reseeded with seed + rank once everything shared is built (dropout differs by rank).
    """
    cfg = config
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    ranks = from_env()
    device = resolve_device(cfg.device)
    if ranks.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ranks.local_rank)
    amp_dtype = resolve_amp(cfg.amp, device)

    data = build_datasets(cfg)
    train_loader, val_loader = build_loaders(cfg, data, pin_memory=device.type == "cuda",
                                             rank=ranks.rank, world_size=ranks.world_size)
    model = build_model(cfg, data.num_classes).to(device)
    if "dead-units" in cfg.inject:
        with torch.no_grad():
            model.probe.bias.fill_(injections.DEAD_BIAS)
    optimizer = build_optimizer(cfg, model)
    if ranks.distributed:
        model = wrap(model, device)
        torch.manual_seed(cfg.seed + ranks.rank)

    steps_per_epoch = len(train_loader) // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"accum_steps {cfg.accum_steps} exceeds the {len(train_loader)} batches of an epoch")
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = build_scheduler(cfg, optimizer, total_steps, epochs)
    scaler = torch.amp.GradScaler(device.type, init_scale=cfg.init_scale, enabled=amp_dtype == torch.float16)
    return Built(model, optimizer, scheduler, scaler, train_loader, val_loader, data, device, amp_dtype,
                 steps_per_epoch, total_steps, epochs, ranks)

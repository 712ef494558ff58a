"""Tiny real training loops that log to TensorBoard with `SummaryWriter`, the way people do.

`write_log(logdir, style, fault, seed)` trains an MLP on CPU (one thread, about a second)
and writes its event files under `logdir`, with the tag names of one tool:

- `plain`: a hand-written loop: `Loss/train`, `Loss/val`, `lr`, `grad_norm`, and one
  `grad_norm/<param>` per parameter, every step;
- `hf`: the Hugging Face Trainer's names, every 4 steps: `train/loss`,
  `train/learning_rate`, `train/grad_norm`, `train/epoch`, `eval/loss`, and the final
  one-point `train/train_loss`;
- `add_scalars`: `writer.add_scalars("loss", {"train": ..., "val": ...})` (child folders).

Faults: `None` (healthy); `"lr_jump"` (from step 60 AdamW's LR is 100x too high: the
loss climbs back); `"explode"` (SGD whose LR grows 8% a step from step 40, a warm-up
without end: the gradient norm grows by orders of magnitude, then the loss turns NaN);
`"overfit"` (64 noisy samples, a wide MLP, 40 epochs of 4 steps: the validation loss
turns up while the training loss keeps falling).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

LR_JUMP_STEP, LR_JUMP_FACTOR = 60, 100
RAMP_STEP, RAMP_FACTOR = 40, 1.08
STYLES = ("plain", "hf", "add_scalars")


def _blobs(n: int, gen: torch.Generator, centers: torch.Tensor, noise_labels: float = 0.0):
    y = torch.randint(0, 4, (n,), generator=gen)
    x = centers[y] + torch.randn(n, 16, generator=gen) * 1.5
    if noise_labels:
        flip = torch.rand(n, generator=gen) < noise_labels
        y = torch.where(flip, torch.randint(0, 4, (n,), generator=gen), y)
    return x, y


def write_log(logdir: Path, style: str = "plain", fault: str | None = None, seed: int = 0) -> Path:
    """Train and log one run into `logdir`; returns it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(Path(logdir), style, fault, seed)
    finally:
        torch.set_num_threads(threads)
    return Path(logdir)


def _train(logdir: Path, style: str, fault: str | None, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    centers = torch.randn(4, 16, generator=gen)
    if fault == "overfit":
        x, y = _blobs(64, gen, centers, noise_labels=0.25)
        width, epochs, batch, lr = 256, 40, 16, 3e-3
    else:
        x, y = _blobs(1024, gen, centers)
        width, epochs, batch, lr = 64, 5, 32, 3e-3
    xv, yv = _blobs(256, gen, centers)
    model = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))
    if fault == "explode":
        lr = 0.05
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
    writer = SummaryWriter(log_dir=str(logdir))
    every = 4 if style == "hf" else 1
    step, losses = 0, []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            if fault == "lr_jump" and step == LR_JUMP_STEP:
                for group in opt.param_groups:
                    group["lr"] = lr * LR_JUMP_FACTOR
            if fault == "explode" and step >= RAMP_STEP:
                for group in opt.param_groups:
                    group["lr"] *= RAMP_FACTOR
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            norms = {n: p.grad.norm().item() for n, p in model.named_parameters()}
            total = sum(v * v for v in norms.values()) ** 0.5
            opt.step()
            losses.append(loss.item())
            if step % every == 0:
                _log_step(writer, style, step, epoch + i / len(x), loss.item(), opt.param_groups[0]["lr"], total, norms)
            step += 1
        with torch.no_grad():
            model.eval()
            val = F.cross_entropy(model(xv), yv).item()
            model.train()
        _log_val(writer, style, step - 1, val)
    if style == "hf":
        writer.add_scalar("train/train_loss", sum(losses) / len(losses), step - 1)
    writer.close()


def _log_step(writer: SummaryWriter, style: str, step: int, epoch: float, loss: float, lr: float, total: float,
              norms: dict[str, float]) -> None:
    if style == "hf":
        for tag, value in (("train/loss", loss), ("train/learning_rate", lr), ("train/grad_norm", total),
                           ("train/epoch", epoch)):
            writer.add_scalar(tag, value, step)
        return
    if style == "add_scalars":
        writer.add_scalars("loss", {"train": loss}, step)
        writer.add_scalar("lr", lr, step)
        return
    writer.add_scalar("Loss/train", loss, step)
    writer.add_scalar("lr", lr, step)
    writer.add_scalar("grad_norm", total, step)
    for name, value in norms.items():
        writer.add_scalar(f"grad_norm/{name}", value, step)


def _log_val(writer: SummaryWriter, style: str, step: int, val: float) -> None:
    if style == "hf":
        writer.add_scalar("eval/loss", val, step)
    elif style == "add_scalars":
        writer.add_scalars("loss", {"val": val}, step)
    else:
        writer.add_scalar("Loss/val", val, step)

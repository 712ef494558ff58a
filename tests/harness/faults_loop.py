"""Faulty training loops for the loop-structure rules, each fault written at least two ways.

Every fault is recorded by at least two differently written loops: small hand-written
loops instrumented with `Monitor` (in this file, in two or three styles: a flat script
loop, a `Trainer` class with callbacks, an fp16 GradScaler loop), and the reference loop's
fault injection (`reference_loop/injections.py`). *Near misses* live here too: healthy
loops that look like a fault to a naive rule (GradScaler skipping its first steps with the
scheduler stepped after it, gradients cleared by hand, a forward under no_grad inside the
training step, a frozen teacher, an optimizer step on gradients rebuilt after zero_grad);
the rules must stay silent on them.

`record_fault(name, run_dir, seed)` records one run on CPU in a fraction of a second.
`FAULTS[name].rule` is the rule it must trigger (None for a near miss), `.at` the first
step where the fault shows (None when the whole run shows it), and `.quiet` the loop rules
that must stay silent on it (at warning or above).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor

from tests.harness.scenarios import shuffled_batches as _batches
from tests.harness.recordings import Recordings

# ---- data and models --------------------------------------------------------------------

STEPS_PER_EPOCH = 12
"""Optimizer steps per epoch of the hand-written loops (384 samples, batch 32)."""
EPOCHS = 4


def _data(seed: int, n: int = 384, dim: int = 8, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, dim, generator=gen)
    vy = torch.randint(0, classes, (96,), generator=gen)
    vx = centers[vy] + torch.randn(96, dim, generator=gen)
    return x, y, vx, vy, gen


class Net(nn.Module):
    """fc1 -> ReLU -> fc2 -> ReLU -> head: Linear layers only (no mode-dependent module)."""

    def __init__(self, dim: int = 8, hidden: int = 16, out: int = 3):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class NormNet(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout -> head: behaves differently in eval mode."""

    def __init__(self, dim: int = 8, hidden: int = 16, out: int = 3):
        super().__init__()
        self.fc1, self.bn, self.drop = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.Dropout(0.2)
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.bn(self.fc1(x)))))


def _validate(model: nn.Module, vx, vy, *, eval_mode: bool = True, no_grad: bool = True,
              restore: bool = True) -> float:
    if eval_mode:
        model.eval()
    ctx = torch.no_grad() if no_grad else torch.enable_grad()
    with ctx:
        loss = sum(F.cross_entropy(model(vx[i:i + 32]), vy[i:i + 32]).item() for i in range(0, len(vx), 32))
    if restore:
        model.train()
    return loss


def _reference(run_dir: Path, seed: int, **overrides) -> None:
    """The reference loop, shrunk to run in well under a second on CPU (8 steps an epoch)."""
    from reference_loop.config import TrainConfig
    from reference_loop.train import train

    settings = dict(seed=seed, train_samples=256, val_samples=128, batch_size=32, width=8, epochs=3,
                    checkpoint_every=0, num_threads=1, param_every=5)
    if overrides.get("task") == "chars":
        settings.update(n_embd=32, n_layer=1, block_size=32, batch_size=16)
    settings.update(overrides)
    train(TrainConfig(**settings), run_dir, progress=False)


# ---- a second style: a Trainer class with callbacks ---------------------------------------


class Trainer:
    """A small callback-driven trainer, written unlike the flat loops (each fault below
    overrides one method). fp16 autocast + GradScaler('cpu') when `fp16`."""

    def __init__(self, run_dir: Path, seed: int, *, fp16: bool = False, model: nn.Module | None = None,
                 scheduler: Callable | None = None, clip: float = 1.0, init_scale: float = 2.0 ** 16):
        torch.manual_seed(seed)
        self.x, self.y, self.vx, self.vy, self.gen = _data(seed)
        self.model = model if model is not None else NormNet()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3)
        self.sched = scheduler(self.opt) if scheduler is not None else None
        self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale) if fp16 else None
        self.fp16, self.clip, self.run_dir = fp16, clip, run_dir
        self.step_no = 0

    # the parts a fault overrides
    def clear(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def backward(self, loss) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def before_step(self) -> None:
        if self.clip:
            if self.scaler:
                self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)

    def optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()

    def after_step(self) -> None:
        if self.sched is not None:
            self.sched.step()

    def end_of_epoch(self, mon: Monitor, epoch: int) -> None:
        with mon.phase("val"):
            mon.log_metrics("val", epoch=epoch, val_loss=_validate(self.model, self.vx, self.vy))

    def fit(self, epochs: int = EPOCHS) -> None:
        with Monitor(self.run_dir, model=self.model, optimizer=self.opt, scheduler=self.sched,
                     scaler=self.scaler) as mon:
            for epoch in range(epochs):
                mon.epoch(epoch)
                self.model.train()
                for xb, yb in mon.loader(_batches(self.x, self.y, 32, self.gen)):
                    self.clear()
                    with torch.autocast("cpu", dtype=torch.float16, enabled=self.fp16):
                        loss = F.cross_entropy(self.model(xb), yb)
                    self.backward(loss)
                    self.before_step()
                    self.optimizer_step()
                    self.after_step()
                    self.step_no += 1
                self.end_of_epoch(mon, epoch)


def _onecycle(total: int = EPOCHS * STEPS_PER_EPOCH):
    return lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total)


# ---- missing-zero-grad ------------------------------------------------------------------


def no_zero_grad_sgd(run_dir: Path, seed: int) -> None:
    """Flat loop, SGD with momentum: zero_grad is never called."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def zero_grad_once_per_epoch(run_dir: Path, seed: int) -> None:
    """Flat loop, Adam: `opt.zero_grad()` sits outside the batch loop (once per epoch)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = NormNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            opt.zero_grad()
            for xb, yb in _batches(x, y, 32, gen):
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            with mon.phase("val"):
                _validate(model, vx, vy)


class _NoClear(Trainer):
    def clear(self) -> None:
        pass


def no_zero_grad_trainer_fp16(run_dir: Path, seed: int) -> None:
    """Trainer class, fp16 + GradScaler + clipping: `clear()` does nothing."""
    _NoClear(run_dir, seed, fp16=True).fit()


def grads_cleared_by_hand(run_dir: Path, seed: int) -> None:
    """No zero_grad call, but `p.grad = None` for every parameter each step: healthy, yet the
    record cannot tell it from a loop that never clears (a documented limitation of
    missing-zero-grad, which reports it at warning, never at error)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                for p in model.parameters():
                    p.grad = None
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


# ---- zero-grad-before-step --------------------------------------------------------------


def zero_grad_between_backward_and_step(run_dir: Path, seed: int) -> None:
    """Flat loop: `loss.backward(); opt.zero_grad(); opt.step()`."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                F.cross_entropy(model(xb), yb).backward()
                opt.zero_grad()
                opt.step()


class _ClearBeforeStep(Trainer):
    def before_step(self) -> None:
        super().before_step()
        self.model.zero_grad(set_to_none=False)  # the bug: after unscale_ and clipping


def model_zero_grad_before_scaler_step(run_dir: Path, seed: int) -> None:
    """Trainer class, fp16: `model.zero_grad(set_to_none=False)` after clipping, before
    `scaler.step` (gradients are zeros, not None)."""
    _ClearBeforeStep(run_dir, seed, fp16=True).fit()


def grads_rebuilt_after_zero_grad(run_dir: Path, seed: int) -> None:
    """Near miss: backward, copy the gradients, zero_grad, write a combination of the copies
    back into `.grad`, step (gradient surgery): the step has gradients."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                F.cross_entropy(model(xb), yb).backward()
                saved = [p.grad.clone() for p in model.parameters()]
                opt.zero_grad()
                for p, g in zip(model.parameters(), saved):
                    p.grad = 0.5 * g
                opt.step()


# ---- scheduler-before-optimizer -----------------------------------------------------------


def scheduler_before_step_per_iteration(run_dir: Path, seed: int) -> None:
    """Flat loop, OneCycleLR: `sched.step()` right before `opt.step()` every iteration."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = _onecycle()(opt)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                sched.step()
                opt.step()


def scheduler_at_epoch_start(run_dir: Path, seed: int) -> None:
    """Flat loop, StepLR per epoch stepped at the *start* of each epoch (old PyTorch style)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = NormNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            sched.step()
            model.train()
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            with mon.phase("val"):
                _validate(model, vx, vy)


class _SchedFirst(Trainer):
    def before_step(self) -> None:
        super().before_step()
        self.sched.step()  # the bug

    def after_step(self) -> None:
        pass


def scheduler_before_scaler_step(run_dir: Path, seed: int) -> None:
    """Trainer class, fp16 + GradScaler: `sched.step()` before `scaler.step(opt)`."""
    _SchedFirst(run_dir, seed, fp16=True, scheduler=_onecycle()).fit()


def scaler_skips_first_steps(run_dir: Path, seed: int) -> None:
    """Near miss: fp16 GradScaler starting at 2**30 skips its first optimizer steps while it
    calibrates; OneCycleLR stepped after `scaler.update()` (torch warns "before
    optimizer.step()" here, wrongly)."""
    Trainer(run_dir, seed, fp16=True, scheduler=_onecycle(), init_scale=2.0 ** 30).fit()


def scheduler_after_zero_grad(run_dir: Path, seed: int) -> None:
    """Near miss: `opt.step(); opt.zero_grad(); sched.step()` (zero_grad opens the next step
    in the record, so the scheduler step is filed under it, before its backward)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = _onecycle()(opt)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                opt.zero_grad()
                sched.step()


# ---- scheduler-never-stepped, scheduler-step-frequency, zero-lr-steps ---------------------


class _NoSchedStep(Trainer):
    def after_step(self) -> None:
        pass


def onecycle_never_stepped(run_dir: Path, seed: int) -> None:
    """Trainer class: a OneCycleLR is built and watched, its step() never called."""
    _NoSchedStep(run_dir, seed, scheduler=_onecycle()).fit()


def steplr_never_stepped(run_dir: Path, seed: int) -> None:
    """Flat loop: StepLR per epoch, the epoch-end `sched.step()` forgotten."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def per_epoch_scheduler_cut_short(run_dir: Path, seed: int) -> None:
    """Near miss: a per-epoch StepLR in a run that crashed within its first epoch (the
    scheduler never had its turn)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    try:
        with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched):
            for i, (xb, yb) in enumerate(_batches(x, y, 32, gen)):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                if i == 7:
                    raise RuntimeError("simulated crash in the first epoch")
    except RuntimeError:
        pass


class _PerEpochSched(Trainer):
    def after_step(self) -> None:
        pass

    def end_of_epoch(self, mon: Monitor, epoch: int) -> None:
        super().end_of_epoch(mon, epoch)
        self.sched.step()  # the bug: a per-iteration schedule stepped once per epoch


def onecycle_stepped_per_epoch(run_dir: Path, seed: int) -> None:
    """Trainer class: OneCycleLR laid out over every iteration, stepped once per epoch."""
    _PerEpochSched(run_dir, seed, scheduler=_onecycle()).fit()


def cosine_iterations_stepped_per_epoch(run_dir: Path, seed: int) -> None:
    """Flat loop: CosineAnnealingLR(T_max = total iterations) stepped once per epoch."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS * STEPS_PER_EPOCH)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            sched.step()


def cosine_epochs_stepped_per_iteration(run_dir: Path, seed: int) -> None:
    """Flat loop: CosineAnnealingLR(T_max = epochs) stepped every iteration: the LR runs
    down to 0 and back up again and again."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                sched.step()


def onecycle_overstepped(run_dir: Path, seed: int) -> None:
    """Flat loop: OneCycleLR laid out over epochs (total_steps=EPOCHS) but stepped every
    iteration: it raises "Tried to step ..." after EPOCHS steps and the run crashes."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=EPOCHS)
    try:
        with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
            for epoch in range(EPOCHS):
                mon.epoch(epoch)
                for xb, yb in _batches(x, y, 32, gen):
                    opt.zero_grad()
                    F.cross_entropy(model(xb), yb).backward()
                    opt.step()
                    sched.step()
    except ValueError:
        pass


HALF = EPOCHS * STEPS_PER_EPOCH // 2


def lambda_schedule_ends_halfway(run_dir: Path, seed: int) -> None:
    """Flat loop: a warm-up + linear decay LambdaLR laid out over half the run, clamped at 0."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 4, max(0.0, (HALF - s) / (HALF - 4))))
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                sched.step()


def polynomial_decay_too_short(run_dir: Path, seed: int) -> None:
    """Trainer class: PolynomialLR(total_iters = half the steps, power 1): LR 0 after it."""
    Trainer(run_dir, seed, scheduler=lambda opt: torch.optim.lr_scheduler.PolynomialLR(
        opt, total_iters=HALF, power=1.0)).fit()


def warmup_from_zero_stepped_per_epoch(run_dir: Path, seed: int) -> None:
    """Trainer class: an iteration warm-up from 0 (LambdaLR s/10) stepped once per epoch, so
    the whole first epoch trains at LR exactly 0."""
    _PerEpochSched(run_dir, seed, scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, s / 10))).fit()


# ---- clip-before-unscale -------------------------------------------------------------------


def clip_scaled_gradients(run_dir: Path, seed: int) -> None:
    """Flat loop, fp16 + GradScaler: `scaler.scale(loss).backward()` then clip_grad_norm_,
    no unscale_."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    with Monitor(run_dir, model=model, optimizer=opt, scaler=scaler) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(xb), yb)
                scaler.scale(loss).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()


class _ClipThenUnscale(Trainer):
    def before_step(self) -> None:
        torch.nn.utils.clip_grad_value_(self.model.parameters(), 0.5)  # the bug: still scaled
        self.scaler.unscale_(self.opt)


def clip_value_then_unscale(run_dir: Path, seed: int) -> None:
    """Trainer class, fp16: clip_grad_value_ first, scaler.unscale_ after it."""
    _ClipThenUnscale(run_dir, seed, fp16=True).fit()


def clip_with_disabled_scaler(run_dir: Path, seed: int) -> None:
    """Near miss: `GradScaler(enabled=False)` (AMP switched off by a flag): scale() is a
    pass-through, so clipping without unscale_ is right."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    with Monitor(run_dir, model=model, optimizer=opt, scaler=scaler) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                scaler.scale(F.cross_entropy(model(xb), yb)).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()


# ---- evaluation: modes and autograd -----------------------------------------------------


def _flat_with_eval(run_dir: Path, seed: int, model: nn.Module, *, phases: bool, eval_mode: bool,
                    no_grad: bool, restore: bool, every: int | None = None) -> None:
    """A flat loop evaluating at each epoch end (or every `every` steps)."""
    x, y, vx, vy, gen = _data(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    step = 0
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            model.train()
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                step += 1
                if every and step % every == 0:
                    _validate(model, vx, vy, eval_mode=eval_mode, no_grad=no_grad, restore=restore)
            if every:
                continue
            if phases:
                with mon.phase("val"):
                    _validate(model, vx, vy, eval_mode=eval_mode, no_grad=no_grad, restore=restore)
            else:
                _validate(model, vx, vy, eval_mode=eval_mode, no_grad=no_grad, restore=restore)


def val_phase_without_eval(run_dir: Path, seed: int) -> None:
    """BatchNorm + Dropout model; validation in `mon.phase("val")` under no_grad, no model.eval()."""
    torch.manual_seed(seed)
    _flat_with_eval(run_dir, seed, NormNet(), phases=True, eval_mode=False, no_grad=True, restore=True)


class _EvalInTrainMode(Trainer):
    def end_of_epoch(self, mon: Monitor, epoch: int) -> None:
        _validate(self.model, self.vx, self.vy, eval_mode=False)  # no phase, no eval()


def no_grad_eval_without_phases(run_dir: Path, seed: int) -> None:
    """Trainer class, BatchNorm model, no phase markers (like zero-code mode): validation
    under no_grad without model.eval()."""
    _EvalInTrainMode(run_dir, seed).fit()


def linear_model_eval_in_train_mode(run_dir: Path, seed: int) -> None:
    """A Linear-only model validated in train mode: it computes the same in both modes (no
    BatchNorm in the parameter table, no dropout in the config), so only info."""
    torch.manual_seed(seed)
    _flat_with_eval(run_dir, seed, Net(), phases=True, eval_mode=False, no_grad=True, restore=True)


def val_phase_with_grad(run_dir: Path, seed: int) -> None:
    """Validation in `mon.phase("val")` with model.eval() but no torch.no_grad()."""
    torch.manual_seed(seed)
    _flat_with_eval(run_dir, seed, NormNet(), phases=True, eval_mode=True, no_grad=False, restore=True)


class _EvalWithGrad(Trainer):
    def end_of_epoch(self, mon: Monitor, epoch: int) -> None:
        _validate(self.model, self.vx, self.vy, no_grad=False)  # no phase, no no_grad


def eval_with_grad_without_phases(run_dir: Path, seed: int) -> None:
    """Trainer class, no phase markers: validation in eval mode with autograd on."""
    _EvalWithGrad(run_dir, seed).fit()


def eval_mode_not_restored(run_dir: Path, seed: int) -> None:
    """Flat loop: model.eval() for validation after each epoch, model.train() never called
    again (the loop calls it only before the first epoch)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = NormNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        model.train()
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            with mon.phase("val"):
                _validate(model, vx, vy, restore=False)


def periodic_eval_not_restored(run_dir: Path, seed: int) -> None:
    """Flat loop, no phases: validation every 8 steps switches to eval mode and does not
    switch back; model.train() only at each epoch start."""
    torch.manual_seed(seed)
    _flat_with_eval(run_dir, seed, NormNet(), phases=False, eval_mode=True, no_grad=True, restore=False, every=8)


def sanity_eval_not_restored(run_dir: Path, seed: int) -> None:
    """Flat loop: a sanity-check validation before training leaves the model in eval mode
    for the whole first epoch (later evaluations restore train mode)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = NormNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        with mon.phase("val"):
            _validate(model, vx, vy, restore=False)
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            with mon.phase("val"):
                _validate(model, vx, vy)


def trained_in_eval_mode_throughout(run_dir: Path, seed: int) -> None:
    """Near miss for train-mode-not-restored: a fine-tuning loop that keeps the whole model in
    eval mode on purpose, from the first step on (no evaluation switched it)."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = NormNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        model.eval()
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def teacher_and_pseudo_labels(run_dir: Path, seed: int) -> None:
    """Near miss for the evaluation rules: inside each training step, a frozen teacher
    (watched as model1, eval mode, requires_grad off, autograd on) and a pseudo-label
    forward of the student under no_grad in train mode; validation done right."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    student, teacher = NormNet(), NormNet()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    with Monitor(run_dir, models=[student, teacher], optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            student.train()
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                soft = teacher(xb).softmax(-1)
                with torch.no_grad():
                    pseudo = student(xb).argmax(-1)
                out = student(xb)
                loss = F.cross_entropy(out, yb) + 0.1 * F.cross_entropy(out, pseudo) + \
                    0.1 * F.kl_div(out.log_softmax(-1), soft, reduction="batchmean")
                loss.backward()
                opt.step()
            with mon.phase("val"):
                _validate(student, vx, vy)


# ---- other healthy loop shapes ------------------------------------------------------------


def gan_two_models(run_dir: Path, seed: int) -> None:
    """Near miss: a GAN with two watched models and two optimizers and schedulers; the
    discriminator and generator steps alternate, each cleared with `model.zero_grad()`."""
    torch.manual_seed(seed)
    gen_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    disc = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g, opt_d = torch.optim.Adam(gen_net.parameters(), 2e-4), torch.optim.Adam(disc.parameters(), 2e-4)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, 1, 0.7)
    sched_d = torch.optim.lr_scheduler.StepLR(opt_d, 1, 0.7)
    real = torch.randn(384, 8, generator=torch.Generator().manual_seed(seed)) + 2
    with Monitor(run_dir, models=[gen_net, disc], optimizers=[opt_d, opt_g], schedulers=[sched_d, sched_g]) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            for i in range(0, len(real), 32):
                fake = gen_net(torch.randn(32, 4))
                disc.zero_grad()
                d_loss = F.softplus(-disc(real[i:i + 32])).mean() + F.softplus(disc(fake.detach())).mean()
                d_loss.backward()
                opt_d.step()
                gen_net.zero_grad()
                F.softplus(-disc(fake)).mean().backward()
                opt_g.step()
            sched_d.step()
            sched_g.step()


def lbfgs_closure(run_dir: Path, seed: int) -> None:
    """Near miss: LBFGS, whose step(closure) calls zero_grad/forward/backward several times
    inside the optimizer step; a per-epoch StepLR."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 64, gen):
                def closure():
                    opt.zero_grad()
                    loss = F.cross_entropy(model(xb), yb)
                    loss.backward()
                    return loss
                opt.step(closure)
            sched.step()


def scheduler_fast_forwarded(run_dir: Path, seed: int) -> None:
    """Near miss: a resumed run fast-forwards its cosine schedule (12 `sched.step()` calls
    before the first optimizer step), then steps it after every optimizer step."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12 + EPOCHS * STEPS_PER_EPOCH)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for _ in range(12):
            sched.step()
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                sched.step()


# ---- params-not-updated --------------------------------------------------------------------


def layer_left_out_of_optimizer(run_dir: Path, seed: int) -> None:
    """Flat loop: the optimizer is built from fc1 and head only; fc2 gets gradients, never steps."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD([*model.fc1.parameters(), *model.head.parameters()], lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=5) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                model.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


class _NewHead(Trainer):
    def __init__(self, run_dir: Path, seed: int):
        super().__init__(run_dir, seed)
        self.model.head = nn.Linear(16, 3)  # the bug: replaced after the optimizer was built


def head_replaced_after_optimizer(run_dir: Path, seed: int) -> None:
    """Trainer class: the head is replaced by a new Linear after the optimizer was built, so
    the optimizer still holds the old head's tensors."""
    _NewHead(run_dir, seed).fit()


def group_frozen_by_lr(run_dir: Path, seed: int) -> None:
    """Near miss: fc1 is frozen through its param group's LR (0 for the whole run) while
    the other group trains: gradients are computed for nothing (params-not-updated says
    so at info), but nothing is wrong."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.SGD([{"params": model.fc1.parameters(), "lr": 0.0},
                           {"params": [*model.fc2.parameters(), *model.head.parameters()]}], lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=5) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def param_updated_by_hand(run_dir: Path, seed: int) -> None:
    """Near miss: a temperature parameter outside the optimizer, updated by hand each step."""
    x, y, vx, vy, gen = _data(seed)
    torch.manual_seed(seed)
    model = Net()
    model.temperature = nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([p for n, p in model.named_parameters() if n != "temperature"], lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=5) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                model.temperature.grad = None
                F.cross_entropy(model(xb) / model.temperature, yb).backward()
                opt.step()
                with torch.no_grad():
                    model.temperature -= 0.01 * model.temperature.grad


# ---- the catalogue -----------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    fn: Callable[[Path, int], None]
    rule: str | None
    """The rule it must trigger (at warning or above unless `severity` says otherwise);
    None for a near miss."""
    at: int | None = None
    """The first step where the fault shows, when it starts at a known step."""
    severity: str = "warning"
    """The lowest severity the finding may have."""
    quiet: tuple[str, ...] = ()
    """Loop rules that must stay silent (nothing at warning or above) on this run."""


ALL_LOOP = ("missing-zero-grad", "zero-grad-before-step", "scheduler-before-optimizer", "scheduler-never-stepped",
            "scheduler-step-frequency", "zero-lr-steps", "clip-before-unscale", "eval-without-eval-mode",
            "eval-with-grad", "train-mode-not-restored", "params-not-updated")


def _but(*rules: str) -> tuple[str, ...]:
    return tuple(r for r in ALL_LOOP if r not in rules)


def _ref(**overrides) -> Callable[[Path, int], None]:
    return lambda run_dir, seed: _reference(run_dir, seed, **overrides)


FAULTS: dict[str, Fault] = {
    # missing-zero-grad
    "no_zero_grad_sgd": Fault(no_zero_grad_sgd, "missing-zero-grad", at=1, quiet=_but("missing-zero-grad")),
    "zero_grad_once_per_epoch": Fault(zero_grad_once_per_epoch, "missing-zero-grad", at=1,
                                      quiet=_but("missing-zero-grad")),
    "no_zero_grad_trainer_fp16": Fault(no_zero_grad_trainer_fp16, "missing-zero-grad", at=1,
                                       quiet=_but("missing-zero-grad")),
    "ref_missing_zero_grad": Fault(_ref(inject=["missing-zero-grad"]), "missing-zero-grad", at=1,
                                   quiet=_but("missing-zero-grad")),
    "ref_missing_zero_grad_chars": Fault(_ref(inject=["missing-zero-grad"], task="chars"), "missing-zero-grad",
                                         at=1, quiet=_but("missing-zero-grad")),
    "grads_cleared_by_hand": Fault(grads_cleared_by_hand, "missing-zero-grad", at=1,
                                   quiet=_but("missing-zero-grad")),  # a known limitation: see the rule
    # zero-grad-before-step
    "zero_grad_between_backward_and_step": Fault(zero_grad_between_backward_and_step, "zero-grad-before-step",
                                                 at=0, severity="error", quiet=_but("zero-grad-before-step")),
    "model_zero_grad_before_scaler_step": Fault(model_zero_grad_before_scaler_step, "zero-grad-before-step",
                                                at=0, severity="error", quiet=_but("zero-grad-before-step")),
    "ref_zero_grad_before_step": Fault(_ref(inject=["zero-grad-before-step"]), "zero-grad-before-step", at=0,
                                       severity="error", quiet=_but("zero-grad-before-step")),
    "grads_rebuilt_after_zero_grad": Fault(grads_rebuilt_after_zero_grad, None, quiet=ALL_LOOP),
    # scheduler-before-optimizer
    "scheduler_before_step_per_iteration": Fault(scheduler_before_step_per_iteration,
                                                 "scheduler-before-optimizer", at=0,
                                                 quiet=_but("scheduler-before-optimizer")),
    "scheduler_at_epoch_start": Fault(scheduler_at_epoch_start, "scheduler-before-optimizer", at=0,
                                      quiet=_but("scheduler-before-optimizer")),
    "scheduler_before_scaler_step": Fault(scheduler_before_scaler_step, "scheduler-before-optimizer", at=0,
                                          quiet=_but("scheduler-before-optimizer")),
    "ref_scheduler_before_optimizer": Fault(_ref(inject=["scheduler-before-optimizer"]),
                                            "scheduler-before-optimizer", at=0,
                                            quiet=_but("scheduler-before-optimizer")),
    "scaler_skips_first_steps": Fault(scaler_skips_first_steps, None, quiet=ALL_LOOP),
    "scheduler_after_zero_grad": Fault(scheduler_after_zero_grad, None, quiet=ALL_LOOP),
    # scheduler-never-stepped
    "onecycle_never_stepped": Fault(onecycle_never_stepped, "scheduler-never-stepped",
                                    quiet=_but("scheduler-never-stepped")),
    "steplr_never_stepped": Fault(steplr_never_stepped, "scheduler-never-stepped",
                                  quiet=_but("scheduler-never-stepped")),
    "ref_scheduler_never_stepped": Fault(_ref(inject=["scheduler-never-stepped"]), "scheduler-never-stepped",
                                         quiet=_but("scheduler-never-stepped")),
    "per_epoch_scheduler_cut_short": Fault(per_epoch_scheduler_cut_short, None, quiet=ALL_LOOP),
    # scheduler-step-frequency
    "onecycle_stepped_per_epoch": Fault(onecycle_stepped_per_epoch, "scheduler-step-frequency",
                                        quiet=_but("scheduler-step-frequency")),
    "cosine_iterations_stepped_per_epoch": Fault(cosine_iterations_stepped_per_epoch, "scheduler-step-frequency",
                                                 quiet=_but("scheduler-step-frequency")),
    "cosine_epochs_stepped_per_iteration": Fault(cosine_epochs_stepped_per_iteration, "scheduler-step-frequency",
                                                 quiet=_but("scheduler-step-frequency", "zero-lr-steps")),
    "onecycle_overstepped": Fault(onecycle_overstepped, "scheduler-step-frequency", severity="error",
                                  quiet=_but("scheduler-step-frequency")),
    "ref_scheduler_step_frequency": Fault(_ref(inject=["scheduler-step-frequency"]), "scheduler-step-frequency",
                                          quiet=_but("scheduler-step-frequency")),
    # zero-lr-steps
    "lambda_schedule_ends_halfway": Fault(lambda_schedule_ends_halfway, "zero-lr-steps", at=HALF,
                                          quiet=_but("zero-lr-steps")),
    "polynomial_decay_too_short": Fault(polynomial_decay_too_short, "zero-lr-steps", at=HALF,
                                        quiet=_but("zero-lr-steps")),
    "warmup_from_zero_stepped_per_epoch": Fault(warmup_from_zero_stepped_per_epoch, "zero-lr-steps", at=1,
                                                quiet=_but("zero-lr-steps", "scheduler-step-frequency")),
    "ref_zero_lr_steps": Fault(_ref(inject=["zero-lr-steps"]), "zero-lr-steps", at=12,
                               quiet=_but("zero-lr-steps")),
    # clip-before-unscale
    "clip_scaled_gradients": Fault(clip_scaled_gradients, "clip-before-unscale", at=0, severity="error",
                                   quiet=_but("clip-before-unscale")),
    "clip_value_then_unscale": Fault(clip_value_then_unscale, "clip-before-unscale", at=0, severity="error",
                                     quiet=_but("clip-before-unscale")),
    "ref_clip_before_unscale": Fault(_ref(inject=["clip-before-unscale"]), "clip-before-unscale", at=0,
                                     severity="error", quiet=_but("clip-before-unscale")),
    "clip_with_disabled_scaler": Fault(clip_with_disabled_scaler, None, quiet=ALL_LOOP),
    # eval-without-eval-mode
    "val_phase_without_eval": Fault(val_phase_without_eval, "eval-without-eval-mode", at=STEPS_PER_EPOCH - 1,
                                    quiet=_but("eval-without-eval-mode")),
    "no_grad_eval_without_phases": Fault(no_grad_eval_without_phases, "eval-without-eval-mode",
                                         at=STEPS_PER_EPOCH - 1, quiet=_but("eval-without-eval-mode")),
    "linear_model_eval_in_train_mode": Fault(linear_model_eval_in_train_mode, "eval-without-eval-mode",
                                             at=STEPS_PER_EPOCH - 1, severity="info", quiet=ALL_LOOP),
    "ref_eval_without_eval_mode": Fault(_ref(inject=["eval-without-eval-mode"]), "eval-without-eval-mode",
                                        at=7, quiet=_but("eval-without-eval-mode")),
    "ref_eval_without_eval_mode_chars": Fault(_ref(inject=["eval-without-eval-mode"], task="chars"),
                                              "eval-without-eval-mode", quiet=_but("eval-without-eval-mode")),
    # eval-with-grad
    "val_phase_with_grad": Fault(val_phase_with_grad, "eval-with-grad", at=STEPS_PER_EPOCH - 1,
                                 quiet=_but("eval-with-grad")),
    "eval_with_grad_without_phases": Fault(eval_with_grad_without_phases, "eval-with-grad",
                                           at=STEPS_PER_EPOCH - 1, quiet=_but("eval-with-grad")),
    "ref_eval_with_grad": Fault(_ref(inject=["eval-with-grad"]), "eval-with-grad", at=7,
                                quiet=_but("eval-with-grad")),
    "teacher_and_pseudo_labels": Fault(teacher_and_pseudo_labels, None, quiet=ALL_LOOP),
    # train-mode-not-restored
    "eval_mode_not_restored": Fault(eval_mode_not_restored, "train-mode-not-restored", at=STEPS_PER_EPOCH,
                                    quiet=_but("train-mode-not-restored")),
    "periodic_eval_not_restored": Fault(periodic_eval_not_restored, "train-mode-not-restored", at=8,
                                        quiet=_but("train-mode-not-restored")),
    "ref_train_mode_not_restored": Fault(_ref(inject=["train-mode-not-restored"]), "train-mode-not-restored",
                                         at=8, quiet=_but("train-mode-not-restored")),
    "sanity_eval_not_restored": Fault(sanity_eval_not_restored, "train-mode-not-restored", at=0,
                                      quiet=_but("train-mode-not-restored")),
    "trained_in_eval_mode_throughout": Fault(trained_in_eval_mode_throughout, None, quiet=ALL_LOOP),
    # other healthy shapes
    "gan_two_models": Fault(gan_two_models, None, quiet=ALL_LOOP),
    "lbfgs_closure": Fault(lbfgs_closure, None, quiet=ALL_LOOP),
    "scheduler_fast_forwarded": Fault(scheduler_fast_forwarded, None, quiet=ALL_LOOP),
    # params-not-updated
    "layer_left_out_of_optimizer": Fault(layer_left_out_of_optimizer, "params-not-updated", severity="error",
                                         quiet=_but("params-not-updated")),
    "head_replaced_after_optimizer": Fault(head_replaced_after_optimizer, "params-not-updated", severity="error",
                                           quiet=_but("params-not-updated")),
    "ref_params_not_updated": Fault(_ref(inject=["params-not-updated"]), "params-not-updated", severity="error",
                                    quiet=_but("params-not-updated")),
    "param_updated_by_hand": Fault(param_updated_by_hand, None, quiet=ALL_LOOP),
    "group_frozen_by_lr": Fault(group_frozen_by_lr, None, quiet=ALL_LOOP),
}
"""Every faulty run and near miss by name."""


_RECORDINGS = Recordings(FAULTS)
record_fault = _RECORDINGS.record
recorded = _RECORDINGS.recorded
fault_tables = _RECORDINGS.tables

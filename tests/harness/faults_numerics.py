"""Faulty training runs for the numerics rules, each fault written at least two ways.

Every fault is recorded twice or more: once as a small hand-written loop instrumented with
`Monitor` (written here, in a style of its own), and once through the reference loop's
fault injection (`reference_loop/injections.py`) where one exists, or a second,
differently written loop where none does. So a rule that passes its tests is not tuned to
one example. A few *near misses* live here too: runs that look like a fault to a naive
rule and are healthy (GradScaler calibrating from a huge initial scale, frozen or unused
parameters, early stopping right after the minimum); the rules must stay silent on them.

`record_fault(name, run_dir, seed)` records one run on CPU in well under a second or two.
`FAULTS[name].rule` is the rule it must trigger (None for a near miss) and
`FAULTS[name].at` the step (or epoch, for overfitting) where the fault starts.
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
from tests.harness.threads import one_torch_thread

# ---- data and models --------------------------------------------------------------------


def _blobs(n: int, dim: int, classes: int, gen: torch.Generator, centers: torch.Tensor | None = None):
    if centers is None:
        centers = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return centers[y] + torch.randn(n, dim, generator=gen), y, centers


class Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head; names stay stable so tests can point at layers."""

    def __init__(self, dim: int, hidden: int, out: int, act: Callable = F.relu):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out)
        self.act = act

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


class Deep(nn.Module):
    """A deep stack (`layers.0` first), for vanishing gradients."""

    def __init__(self, dim: int, hidden: int, out: int, depth: int, act: Callable, init_std: float | None = None):
        super().__init__()
        sizes = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(hidden, out)
        self.act = act
        if init_std is not None:
            for layer in self.layers:
                nn.init.normal_(layer.weight, std=init_std)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


def _reference(run_dir: Path, seed: int, **overrides) -> None:
    """The reference loop, shrunk to run in about a second on CPU."""
    from reference_loop.config import TrainConfig
    from reference_loop.train import train

    settings = dict(seed=seed, train_samples=256, val_samples=128, batch_size=32, width=8, epochs=3,
                    checkpoint_every=0, param_every=5)
    if overrides.get("task") == "chars":
        settings.update(n_embd=32, n_layer=1, block_size=32, batch_size=16)
    settings.update(overrides)
    train(TrainConfig(**settings), run_dir, progress=False)


# ---- non-finite gradients and weights ---------------------------------------------------

SQRT_STEP = 15


def sqrt_of_zero_grad(run_dir: Path, seed: int) -> None:
    """A finite loss with a NaN gradient: at step SQRT_STEP a regulariser takes sqrt of an
    exact 0 (d sqrt(u)/du = inf, times 0 = NaN) on `head.weight`. Plain SGD writes the NaN
    into the weights; the loss turns NaN only from the next step on."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(1024, 8, 3, gen)
    model = Net(8, 32, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=5) as mon:
        for step, (xb, yb) in enumerate(_batches(x, y, 32, gen)):
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            if step == SQRT_STEP:
                loss = loss + torch.sqrt((model.head.weight * 0).pow(2).sum())
            loss.backward()
            opt.step()


def nan_loss_reference(run_dir: Path, seed: int) -> None:
    """The reference loop's `nonfinite-loss` injection: loss x NaN at step 10, no scaler."""
    _reference(run_dir, seed, inject=["nonfinite-loss"], nan_step=10)


def nan_weight_adam(run_dir: Path, seed: int) -> None:
    """A NaN written straight into a weight (a bad checkpoint merge, an in-place op gone
    wrong) at step 12, in an Adam + accumulation loop: the weights are NaN first, then
    the loss and every gradient."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(1024, 8, 3, gen)
    model = Net(8, 32, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=4) as mon:
        step = 0
        for i, (xb, yb) in enumerate(_batches(x, y, 16, gen)):
            (F.cross_entropy(model(xb), yb) / 2).backward()
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
                if step == 12:
                    with torch.no_grad():
                        model.fc2.weight[0, 0] = float("nan")
                step += 1


def scaler_calibrating(run_dir: Path, seed: int) -> None:
    """Near miss: fp16 + GradScaler starting from a huge scale (2**40): the first steps'
    gradients overflow and are skipped while the scale calibrates down, then training is
    normal. Inf gradients on skipped steps are GradScaler doing its job."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(1024, 12, 3, gen)
    model = Net(12, 48, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40, growth_interval=30)
    with Monitor(run_dir, model=model, optimizer=opt, scaler=scaler) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(xb), yb)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                scaler.step(opt)
                scaler.update()


# ---- loss scale collapse ----------------------------------------------------------------

OVERFLOW_STEP = 25


def overflow_from_midrun(run_dir: Path, seed: int) -> None:
    """fp16 + GradScaler, healthy for OVERFLOW_STEP steps; then an auxiliary loss term is
    weighted 1e7 (a mis-typed loss weight). The loss stays finite (it is computed in
    float32) but its fp16 backward overflows at any sane scale, so GradScaler skips step
    after step, halving its scale each time, for the rest of the run."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(2048, 12, 3, gen)
    model = Net(12, 48, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    with Monitor(run_dir, model=model, optimizer=opt, scaler=scaler) as mon:
        for step, (xb, yb) in enumerate(_batches(x, y, 32, gen)):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb)
            if step >= OVERFLOW_STEP:
                loss = loss + 1e7 * logits.float().pow(2).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def collapse_reference(run_dir: Path, seed: int) -> None:
    """The reference loop's `loss-scale-collapse` injection (logits x 1e9 in fp16: every
    forward overflows, every step is skipped), on the character transformer."""
    _reference(run_dir, seed, task="chars", inject=["loss-scale-collapse"], max_steps=16, epochs=2)


# ---- gradient explosion and loss divergence ----------------------------------------------

LR_JUMP_STEP = 40


def sgd_lr_too_high(run_dir: Path, seed: int) -> None:
    """Linear regression with plain SGD; from LR_JUMP_STEP the LR is 20x too high (a
    mis-typed schedule): each step overshoots further, the gradient norm and the loss
    grow geometrically (x~1.3 per step) for ~40 steps before anything overflows."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    w = torch.randn(16, 1, generator=gen)
    x = torch.randn(4096, 16, generator=gen)
    y = x @ w + 0.1 * torch.randn(4096, 1, generator=gen)
    model = nn.Sequential(nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for step, (xb, yb) in enumerate(_batches(x, y, 64, gen)):
            if step == LR_JUMP_STEP:
                for group in opt.param_groups:
                    group["lr"] = 1.15
            if step >= LR_JUMP_STEP + 40:
                break
            opt.zero_grad()
            F.mse_loss(model(xb), yb).backward()
            opt.step()


def rnn_explosion_clipped(run_dir: Path, seed: int) -> None:
    """A vanilla RNN whose recurrent weights are grown by an aggressive Adam LR, with
    clipping at 1.0: `grad_norm` (after clipping) stays at 1 while the pre-clip norm
    (`clip_norm`) climbs by orders of magnitude and the loss gets worse."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.randn(1024, 30, 4, generator=gen)
    y = x[:, :, 0].cumsum(1)[:, -1:].clone()
    rnn = nn.RNN(4, 32, batch_first=True, nonlinearity="relu")
    head = nn.Linear(32, 1)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            for step, (xb, yb) in enumerate(_batches(x, y, 32, gen)):
                if epoch == 0 and step == 10:
                    for group in opt.param_groups:
                        group["lr"] = 0.05
                opt.zero_grad()
                out, _ = model["rnn"](xb)
                loss = F.mse_loss(model["head"](out[:, -1]), yb)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()


def explosion_reference(run_dir: Path, seed: int) -> None:
    """The reference loop's `gradient-explosion` injection (LR x 1000) on the character
    transformer, with clipping (the reference default): loss and pre-clip norm blow up."""
    _reference(run_dir, seed, task="chars", inject=["gradient-explosion"], epochs=4)


def label_drift(run_dir: Path, seed: int) -> None:
    """Loss divergence without any numeric blow-up: from step 60 the data pipeline hands
    out a growing share of wrong labels (all of them from step 160: a join on a shifted
    key), so after a good start the loss climbs for a hundred steps and stays up."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(8000, 8, 4, gen)
    model = Net(8, 32, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for step, (xb, yb) in enumerate(_batches(x, y, 32, gen)):
            opt.zero_grad()
            wrong = min(1.0, max(0.0, (step - 60) / 100))
            shuffled = torch.randint(0, 4, yb.shape, generator=gen)
            target = torch.where(torch.rand(len(yb), generator=gen) < wrong, shuffled, yb)
            F.cross_entropy(model(xb), target).backward()
            opt.step()


def lr_ramp_too_high(run_dir: Path, seed: int) -> None:
    """An LR warm-up that never stops: Adam's LR climbs linearly from 1e-3 to 0.5 over
    the run. The loss falls while the LR is sane and climbs once it is far too high."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(6400, 10, 4, gen)
    x = x + 1.5 * torch.randn(x.shape, generator=gen)
    model = Net(10, 64, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 + s * 2.5)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for xb, yb in _batches(x, y, 32, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            sched.step()


# ---- gradient spikes ------------------------------------------------------------------

SPIKE_STEPS = (45, 110)


def corrupt_batches(run_dir: Path, seed: int) -> None:
    """Two corrupt batches (inputs x 30 and labels off by one, as from a unit mix-up and a
    shifted label file upstream) at SPIKE_STEPS in an otherwise healthy Adam run: two
    isolated ~100x gradient-norm spikes (every layer's gradient scales with the input; the
    head's carries the most); Adam bounds the update, so training recovers at once."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(5120, 10, 4, gen)
    model = Net(10, 32, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for step, (xb, yb) in enumerate(_batches(x, y, 32, gen)):
            if step in SPIKE_STEPS:
                xb, yb = xb * 30, (yb + 1) % 4
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def mislabeled_batch_clipped(run_dir: Path, seed: int) -> None:
    """A transformer-free classifier with clipping at 1.0 and AdamW: at step SPIKE_STEPS[0]
    one batch arrives with every label wrong and its logits' head saturated (a shuffled
    label file); the clip hides it from `grad_norm`, the pre-clip `clip_norm` shows it."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(4096, 10, 4, gen)
    model = Net(10, 32, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for step, (xb, yb) in enumerate(_batches(x, y, 64, gen)):
                opt.zero_grad()
                if epoch == 0 and step == SPIKE_STEPS[0]:
                    yb = (yb + 1) % 4
                    xb = xb * 8
                F.cross_entropy(model(xb), yb).backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()


# ---- vanishing gradients and dead units -------------------------------------------------


def deep_sigmoid(run_dir: Path, seed: int) -> None:
    """A 12-layer sigmoid MLP with default init: each layer multiplies the backward signal
    by at most 1/4, so the first layers' gradients are ~1e-7 of the last layers'."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(2048, 16, 4, gen)
    model = Deep(16, 32, 4, depth=12, act=torch.sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for xb, yb in _batches(x, y, 32, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def deep_tanh_small_init(run_dir: Path, seed: int) -> None:
    """A 10-layer tanh MLP initialised with std 0.02 (far below 1/sqrt(fan_in)), Adam:
    the backward signal shrinks ~10x per layer, the first layers get nearly nothing."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(2048, 16, 4, gen)
    model = Deep(16, 64, 4, depth=10, act=torch.tanh, init_std=0.02)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 64, gen):
                opt.zero_grad(set_to_none=False)
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def dead_relu_layer(run_dir: Path, seed: int) -> None:
    """`fc2`'s bias is pushed to -50 before training (a bad init): every unit after its
    ReLU is 0 for every input, so `fc2` and `fc1` get exactly zero gradients; only
    `head.bias` learns."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(1024, 8, 3, gen)
    model = Net(8, 32, 3)
    with torch.no_grad():
        model.fc2.bias.fill_(-50.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def dead_units_reference(run_dir: Path, seed: int) -> None:
    """The reference loop's `dead-units` injection (probe bias -1000) on the CNN."""
    _reference(run_dir, seed, inject=["dead-units"])


def frozen_and_unused(run_dir: Path, seed: int) -> None:
    """Near miss: a frozen embedding-like first layer (requires_grad False), and a
    parameter that is never used in forward (its grad stays None), with
    `zero_grad(set_to_none=False)`: neither is a dead unit."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(1024, 8, 3, gen)
    model = Net(8, 32, 3)
    model.unused = nn.Linear(4, 4)
    model.fc1.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for xb, yb in _batches(x, y, 32, gen):
                opt.zero_grad(set_to_none=False)
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


# ---- loss plateau -------------------------------------------------------------------------


def tiny_lr_plain(run_dir: Path, seed: int) -> None:
    """SGD with lr=1e-7 (a typo: 1e-7 for 1e-3): the loss stays where it started."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, _ = _blobs(3200, 10, 4, gen)
    model = Net(10, 32, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-7, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for xb, yb in _batches(x, y, 32, gen):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def plateau_reference(run_dir: Path, seed: int) -> None:
    """The reference loop's `loss-plateau` injection (LR 1e-9) on the CNN."""
    _reference(run_dir, seed, inject=["loss-plateau"])


def zero_grad_before_step_reference(run_dir: Path, seed: int) -> None:
    """The reference loop's `zero-grad-before-step` injection: no step ever has gradients."""
    _reference(run_dir, seed, inject=["zero-grad-before-step"], task="chars", epochs=4)


# ---- overfitting --------------------------------------------------------------------------


def small_data_big_mlp(run_dir: Path, seed: int) -> None:
    """64 training samples with 25% wrong labels, a wide MLP, Adam, 40 epochs, evaluated
    every epoch: the val loss bottoms out after a few epochs and climbs while the training
    loss keeps falling towards 0."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, centers = _blobs(64, 10, 4, gen)
    noisy = torch.rand(64, generator=gen) < 0.25
    y = torch.where(noisy, torch.randint(0, 4, (64,), generator=gen), y)
    x = x + 1.5 * torch.randn(x.shape, generator=gen)
    vx, vy, _ = _blobs(512, 10, 4, gen, centers)
    vx = vx + 1.5 * torch.randn(vx.shape, generator=gen)
    model = Net(10, 256, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(40):
            mon.epoch(epoch)
            model.train()
            for xb, yb in _batches(x, y, 16, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            with mon.phase("val"):
                model.eval()
                with torch.no_grad():
                    val = F.cross_entropy(model(vx), vy).item()
            mon.log_metrics("val", epoch=epoch, val_loss=val)


def curve_fit_overfit(run_dir: Path, seed: int) -> None:
    """Full-batch regression of a noisy sine from 20 points with a wide MLP and Adam,
    evaluated every 10 steps (phase "valid", plus a "train" metric): the validation
    MSE bottoms out early, then climbs as the network threads the noise."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.rand(20, 1, generator=gen) * 6 - 3
    y = torch.sin(x) + 0.3 * torch.randn(20, 1, generator=gen)
    vx = torch.linspace(-3, 3, 200).unsqueeze(1)
    vy = torch.sin(vx)
    model = nn.Sequential(nn.Linear(1, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for step in range(400):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            if step % 10 == 9:
                with mon.phase("valid"), torch.no_grad():
                    val = F.mse_loss(model(vx), vy).item()
                mon.log_metrics("train", epoch=step // 10, train_loss=loss.item())
                mon.log_metrics("valid", epoch=step // 10, val_loss=val)


def early_stopped_overfit(run_dir: Path, seed: int) -> None:
    """Near miss: the same small-data MLP as `small_data_big_mlp`, stopped by early
    stopping (patience 2) just after the val minimum, as it should be."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y, centers = _blobs(64, 10, 4, gen)
    noisy = torch.rand(64, generator=gen) < 0.25
    y = torch.where(noisy, torch.randint(0, 4, (64,), generator=gen), y)
    x = x + 1.5 * torch.randn(x.shape, generator=gen)
    vx, vy, _ = _blobs(512, 10, 4, gen, centers)
    vx = vx + 1.5 * torch.randn(vx.shape, generator=gen)
    model = Net(10, 256, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    best, bad = float("inf"), 0
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(40):
            mon.epoch(epoch)
            model.train()
            for xb, yb in _batches(x, y, 16, gen):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            with mon.phase("val"):
                model.eval()
                with torch.no_grad():
                    val = F.cross_entropy(model(vx), vy).item()
            mon.log_metrics("val", epoch=epoch, val_loss=val)
            if val < best:
                best, bad = val, 0
            else:
                bad += 1
                if bad >= 2:
                    break


# ---- the catalogue -------------------------------------------------------------------------

NUMERICS = ("nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters", "loss-scale-collapse",
            "gradient-explosion", "gradient-spike", "vanishing-gradients", "dead-units", "loss-divergence",
            "loss-plateau", "overfitting")
"""Every numerics rule, for near misses that none of them may flag."""


@dataclass(frozen=True)
class Fault:
    record: Callable[[Path, int], None]
    rule: str | None
    """The rule it must trigger; None for a near miss."""
    at: int | None = None
    """The step (epoch for overfitting) where the fault starts, when known."""
    quiet: tuple[str, ...] = ()
    """Rules that must stay silent on it (a near miss: all numerics rules)."""


FAULTS: dict[str, Fault] = {
    "sqrt_of_zero_grad": Fault(sqrt_of_zero_grad, "nonfinite-gradients", SQRT_STEP),
    "nan_loss_reference": Fault(nan_loss_reference, "nonfinite-gradients", 10),
    "nan_weight_adam": Fault(nan_weight_adam, "nonfinite-parameters", 12),
    "scaler_calibrating": Fault(scaler_calibrating, None, quiet=NUMERICS),
    "overflow_from_midrun": Fault(overflow_from_midrun, "loss-scale-collapse", OVERFLOW_STEP),
    "collapse_reference": Fault(collapse_reference, "loss-scale-collapse", 0),
    "sgd_lr_too_high": Fault(sgd_lr_too_high, "gradient-explosion", LR_JUMP_STEP, quiet=("gradient-spike",)),
    "rnn_explosion_clipped": Fault(rnn_explosion_clipped, "gradient-explosion", 10),
    "explosion_reference": Fault(explosion_reference, "gradient-explosion", 1),
    "label_drift": Fault(label_drift, "loss-divergence", 60, quiet=("gradient-explosion", "gradient-spike")),
    "lr_ramp_too_high": Fault(lr_ramp_too_high, "loss-divergence"),
    "corrupt_batches": Fault(corrupt_batches, "gradient-spike", SPIKE_STEPS[0],
                             quiet=("gradient-explosion", "loss-divergence")),
    "mislabeled_batch_clipped": Fault(mislabeled_batch_clipped, "gradient-spike", SPIKE_STEPS[0],
                                      quiet=("gradient-explosion", "loss-divergence")),
    "deep_sigmoid": Fault(deep_sigmoid, "vanishing-gradients", quiet=("dead-units",)),
    "deep_tanh_small_init": Fault(deep_tanh_small_init, "vanishing-gradients", quiet=("dead-units",)),
    "dead_relu_layer": Fault(dead_relu_layer, "dead-units", 0, quiet=("vanishing-gradients",)),
    "dead_units_reference": Fault(dead_units_reference, "dead-units", 0, quiet=("vanishing-gradients",)),
    "frozen_and_unused": Fault(frozen_and_unused, None, quiet=NUMERICS),
    "tiny_lr_plain": Fault(tiny_lr_plain, "loss-plateau", 0),
    "plateau_reference": Fault(plateau_reference, "loss-plateau", 0),
    "zero_grad_before_step_reference": Fault(zero_grad_before_step_reference, "loss-plateau", 0,
                                             quiet=("dead-units",)),
    "small_data_big_mlp": Fault(small_data_big_mlp, "overfitting"),
    "curve_fit_overfit": Fault(curve_fit_overfit, "overfitting"),
    "early_stopped_overfit": Fault(early_stopped_overfit, None, quiet=NUMERICS),
}
"""Every faulty (or near-miss) run by name."""


def record_fault(name: str, run_dir: Path, seed: int = 0) -> Path:
    """Record fault `name` into `run_dir` and return it.

    On one CPU thread: several faults are chaotic (an LR far too high), and torch's
    multi-threaded reductions add in an order that depends on the thread count, so the
    same seed would otherwise give other numbers on another machine."""
    with one_torch_thread():
        FAULTS[name].record(Path(run_dir), seed)
    return Path(run_dir)


_RECORDED: dict[tuple[str, str, int], Path] = {}


def recorded(name: str, root: Path, seed: int = 0) -> Path:
    """Fault `name` recorded under `root`, once per process: test modules share one
    recording per session (pass `tmp_path_factory.getbasetemp()` as `root`)."""
    key = (str(root), name, seed)
    if key not in _RECORDED:
        _RECORDED[key] = record_fault(name, Path(root) / "numerics-faults" / f"{name}-s{seed}", seed)
    return _RECORDED[key]

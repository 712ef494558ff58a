"""Gradient accumulation that does not accumulate, and the loops that look like it.

The fault: `zero_grad()` for every micro-batch while the optimizer steps only every k-th,
so each step uses the last micro-batch's gradient (rule `zero-grad-before-step`). It is
written three ways here (a flat loop over a torch DataLoader, a Trainer class with fp16
GradScaler and `model.zero_grad(set_to_none=False)`, two backward passes per micro-batch)
plus the reference loop's `--inject zero-grad-every-micro-batch`; the zero-code version is
tests/scripts/zero_grad_every_micro_batch.py.

The near misses also run a backward that a `zero_grad` clears before any optimizer step
uses it, and are healthy: SAM (first_step/second_step) and an ASAM-style wrapper (two
backward passes on the same batch), FGSM and PGD adversarial training (the attack's
backward is cleared, the batch is then trained on), a saliency probe on the batch just
trained on, a WGAN-GP with 5 critic iterations and a gradient penalty (`create_graph`), a
GAN whose generator steps after the discriminator cleared its own gradients, LBFGS with a
closure, and accumulation done right (a final partial window cleared at the next epoch,
`set_to_none=False`, the reference loop with accum_steps=4). Every loop fetches its
batches through `Monitor.loader`, so the recorder knows when a new batch arrives.

`record_fault(name, run_dir, seed)` records one run on CPU in well under a second.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from diagnose import Monitor
from tests.harness.faults_loop import (
    ALL_LOOP,
    Fault,
    Net,
    NormNet,
    _but,
    _data,
    _reference,
)
from tests.harness.scenarios import shuffled_batches as _batches
from tests.harness.recordings import Recordings

EPOCHS = 3
ACCUM = 4


def _loader(seed: int, batch_size: int = 16, n: int = 384) -> DataLoader:
    x, y, _, _, gen = _data(seed, n=n)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)


# ---- the fault ---------------------------------------------------------------------------


def accum_cleared_every_micro_batch(run_dir: Path, seed: int) -> None:
    """Flat loop over a DataLoader: `opt.zero_grad()` at the top of every micro-batch,
    `opt.step()` every 4th (24 batches an epoch: 6 steps)."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for i, (xb, yb) in enumerate(mon.loader(loader)):
                opt.zero_grad()  # the bug: clears the micro-batches accumulated so far
                loss = F.cross_entropy(model(xb), yb) / ACCUM
                loss.backward()
                if (i + 1) % ACCUM == 0:
                    opt.step()


class _AccumTrainer:
    """A Trainer class: fp16 GradScaler on CPU, unscale + clip, a per-step OneCycleLR, 3
    micro-batches a step, validation in a phase. `clear_every_micro_batch` is the bug."""

    def __init__(self, run_dir: Path, seed: int, *, clear_every_micro_batch: bool, set_to_none: bool = True):
        torch.manual_seed(seed)
        self.x, self.y, self.vx, self.vy, self.gen = _data(seed)
        self.model = NormNet()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-3)
        self.accum, self.bs = 3, 16
        steps = EPOCHS * (len(self.x) // self.bs // self.accum)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=3e-3, total_steps=steps)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        self.run_dir, self.bug, self.set_to_none = run_dir, clear_every_micro_batch, set_to_none

    def micro_batch(self, i: int, xb, yb) -> None:
        if self.bug or i % self.accum == 0:
            self.model.zero_grad(set_to_none=self.set_to_none)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(self.model(xb), yb) / self.accum
        self.scaler.scale(loss).backward()
        if (i + 1) % self.accum == 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()

    def fit(self) -> None:
        with Monitor(self.run_dir, model=self.model, optimizer=self.opt, scheduler=self.sched,
                     scaler=self.scaler) as mon:
            for epoch in range(EPOCHS):
                mon.epoch(epoch)
                for i, (xb, yb) in enumerate(mon.loader(_batches(self.x, self.y, self.bs, self.gen))):
                    self.micro_batch(i, xb, yb)
                with mon.phase("val"):
                    self.model.eval()
                    with torch.no_grad():
                        F.cross_entropy(self.model(self.vx), self.vy)
                    self.model.train()


def accum_cleared_trainer_fp16(run_dir: Path, seed: int) -> None:
    """Trainer class, fp16: `model.zero_grad(set_to_none=True)` before every micro-batch,
    `scaler.step` every 3rd."""
    _AccumTrainer(run_dir, seed, clear_every_micro_batch=True).fit()


def accum_cleared_two_losses(run_dir: Path, seed: int) -> None:
    """Two backward passes per micro-batch (a main and an auxiliary loss), accumulation over
    2 micro-batches, `opt.zero_grad(set_to_none=False)` before each micro-batch."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed, batch_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for i, (xb, yb) in enumerate(mon.loader(loader)):
                opt.zero_grad(set_to_none=False)  # the bug
                out = model(xb)
                (F.cross_entropy(out, yb) / 2).backward(retain_graph=True)
                (1e-3 * out.pow(2).mean() / 2).backward()
                if i % 2 == 1:
                    opt.step()


# ---- near misses: a batch used twice -------------------------------------------------------


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation as it is usually written (davda54/sam): `first_step`
    climbs to the worst nearby weights and clears the gradients, `second_step` restores the
    weights and steps the base optimizer with the gradient found there."""

    def __init__(self, params, base_optimizer, rho: float = 0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p]["e_w"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):  # SAM is driven by first_step/second_step
        raise NotImplementedError("call first_step and second_step")


def sam_first_second_step(run_dir: Path, seed: int) -> None:
    """Near miss: SAM; `loss.backward(); first_step(zero_grad=True)`, a second forward and
    backward on the same batch, `second_step(zero_grad=True)` (the base SGD steps)."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed, batch_size=32)
    sam = SAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizers=[sam.base_optimizer, sam]) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                F.cross_entropy(model(xb), yb).backward()
                sam.first_step(zero_grad=True)
                F.cross_entropy(model(xb), yb).backward()
                sam.second_step(zero_grad=True)


class ASAM:
    """Adaptive SAM as SamsungLabs/ASAM writes it: a wrapper around a plain optimizer;
    `ascent_step` ends with `optimizer.zero_grad()`, `descent_step` steps and clears."""

    def __init__(self, optimizer, model, rho: float = 0.5, eta: float = 0.01):
        self.optimizer, self.model, self.rho, self.eta = optimizer, model, rho, eta
        self.state: dict = {}

    @torch.no_grad()
    def ascent_step(self) -> None:
        wgrads = []
        for n, p in self.model.named_parameters():
            if p.grad is None:
                continue
            t_w = torch.abs(p.data) + self.eta if "weight" in n else torch.ones_like(p)
            self.state.setdefault(p, {})["eta"] = t_w
            p.grad.mul_(t_w)
            wgrads.append(torch.norm(p.grad, p=2))
        norm = torch.norm(torch.stack(wgrads), p=2) + 1e-16
        for n, p in self.model.named_parameters():
            if p.grad is None:
                continue
            eps = self.state[p]["eta"] * self.state[p]["eta"] * p.grad * (self.rho / norm)
            p.add_(eps)
            self.state[p]["eps"] = eps
        self.optimizer.zero_grad()

    @torch.no_grad()
    def descent_step(self) -> None:
        for p in self.model.parameters():
            if p.grad is not None and "eps" in self.state.get(p, {}):
                p.sub_(self.state[p]["eps"])
        self.optimizer.step()
        self.optimizer.zero_grad()


def asam_wrapper(run_dir: Path, seed: int) -> None:
    """Near miss: ASAM around SGD with a per-epoch StepLR; the batches come from a
    generator, the wrapper clears the ascent's gradients with `optimizer.zero_grad()`."""
    x, y, _, _, gen = _data(seed)
    torch.manual_seed(seed)
    model = NormNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)
    minimizer = ASAM(opt, model)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in mon.loader(_batches(x, y, 32, gen)):
                F.cross_entropy(model(xb), yb).backward()
                minimizer.ascent_step()
                F.cross_entropy(model(xb), yb).backward()
                minimizer.descent_step()
            sched.step()


def fgsm_adversarial_training(run_dir: Path, seed: int) -> None:
    """Near miss: FGSM adversarial training. The attack's backward (for `x.grad`) also
    fills the weights' gradients; `model.zero_grad()` clears them before the training
    backward on the adversarial version of the same batch."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed, batch_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                xb = xb.clone().requires_grad_(True)
                F.cross_entropy(model(xb), yb).backward()
                x_adv = (xb + 0.1 * xb.grad.sign()).detach()
                model.zero_grad()
                loss = 0.5 * F.cross_entropy(model(xb.detach()), yb) + 0.5 * F.cross_entropy(model(x_adv), yb)
                loss.backward()
                opt.step()


def pgd_adversarial_training(run_dir: Path, seed: int) -> None:
    """Near miss: PGD (3 attack iterations, each a backward and `opt.zero_grad()`), then
    `opt.zero_grad(); loss(x_adv).backward(); opt.step()` on the same batch."""
    torch.manual_seed(seed)
    model, loader = NormNet(), _loader(seed, batch_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                delta = torch.zeros_like(xb, requires_grad=True)
                for _ in range(3):
                    F.cross_entropy(model(xb + delta), yb).backward()
                    delta = (delta + 0.05 * delta.grad.sign()).clamp(-0.2, 0.2).detach().requires_grad_(True)
                    opt.zero_grad()
                opt.zero_grad()
                F.cross_entropy(model(xb + delta.detach()), yb).backward()
                opt.step()


def saliency_probe_after_step(run_dir: Path, seed: int) -> None:
    """Near miss: after every step, input-gradient saliency on the batch just trained on
    (a backward for `x.grad`, then `model.zero_grad()`); the next batch is cleared as usual."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed, batch_size=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    saliency = []
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                probe = xb[:4].clone().requires_grad_(True)
                F.cross_entropy(model(probe), yb[:4]).backward()
                saliency.append(probe.grad.abs().mean().item())
                model.zero_grad(set_to_none=True)


# ---- near misses: several networks, closures ------------------------------------------------


def wgan_gp_critic_iterations(run_dir: Path, seed: int) -> None:
    """Near miss: WGAN-GP; 5 critic iterations per generator step, each on a new batch, with
    a gradient penalty through `torch.autograd.grad(create_graph=True)`; the generator's
    backward also fills the critic's gradients, which the next `opt_d.zero_grad()` clears."""
    torch.manual_seed(seed)
    gen_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    critic = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g = torch.optim.Adam(gen_net.parameters(), 1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), 1e-4, betas=(0.5, 0.9))
    real = torch.randn(480, 8, generator=torch.Generator().manual_seed(seed)) + 2
    loader = DataLoader(TensorDataset(real), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    with Monitor(run_dir, models=[gen_net, critic], optimizers=[opt_d, opt_g]) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for i, (xb,) in enumerate(mon.loader(loader)):
                opt_d.zero_grad()
                with torch.no_grad():
                    fake = gen_net(torch.randn(len(xb), 4))
                alpha = torch.rand(len(xb), 1)
                mixed = (alpha * xb + (1 - alpha) * fake).requires_grad_(True)
                grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
                penalty = ((grad.norm(2, dim=1) - 1) ** 2).mean()
                (critic(fake).mean() - critic(xb).mean() + 10 * penalty).backward()
                opt_d.step()
                if i % 5 == 4:
                    opt_g.zero_grad()
                    (-critic(gen_net(torch.randn(16, 4))).mean()).backward()
                    opt_g.step()


def gan_generator_cleared_by_other_optimizer(run_dir: Path, seed: int) -> None:
    """Near miss: a GAN that computes the generator's backward first, then clears and steps
    the discriminator (`opt_d.zero_grad()`), then steps the generator: the `zero_grad`
    between the generator's backward and its step is the other network's."""
    torch.manual_seed(seed)
    gen_net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    disc = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_g, opt_d = torch.optim.Adam(gen_net.parameters(), 2e-4), torch.optim.Adam(disc.parameters(), 2e-4)
    real = torch.randn(384, 8, generator=torch.Generator().manual_seed(seed)) + 2
    loader = DataLoader(TensorDataset(real), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    with Monitor(run_dir, models=[gen_net, disc], optimizers=[opt_d, opt_g]) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for (xb,) in mon.loader(loader):
                opt_g.zero_grad()
                fake = gen_net(torch.randn(len(xb), 4))
                F.softplus(-disc(fake)).mean().backward()
                opt_d.zero_grad()
                (F.softplus(-disc(xb)).mean() + F.softplus(disc(fake.detach())).mean()).backward()
                opt_d.step()
                opt_g.step()


def lbfgs_closure_loader(run_dir: Path, seed: int) -> None:
    """Near miss: LBFGS over a DataLoader; `step(closure)` runs zero_grad + backward several
    times inside the optimizer step, on the same batch."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed, batch_size=64)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3, line_search_fn="strong_wolfe")
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                def closure():
                    opt.zero_grad()
                    loss = F.cross_entropy(model(xb), yb)
                    loss.backward()
                    return loss
                opt.step(closure)


# ---- near misses: accumulation done right ---------------------------------------------------


def accum_partial_window_cleared(run_dir: Path, seed: int) -> None:
    """Near miss: accumulation over 4 micro-batches with `zero_grad()` at the start of each
    epoch and after each step; 22 batches an epoch, so the last 2 of each epoch are never
    stepped on and are cleared by the next epoch's first `zero_grad` (5 steps an epoch)."""
    torch.manual_seed(seed)
    model, loader = Net(), _loader(seed, batch_size=16, n=352)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS + 1):
            mon.epoch(epoch)
            opt.zero_grad()
            for i, (xb, yb) in enumerate(mon.loader(loader)):
                (F.cross_entropy(model(xb), yb) / ACCUM).backward()
                if (i + 1) % ACCUM == 0:
                    opt.step()
                    opt.zero_grad()


def accum_trainer_set_to_none_false(run_dir: Path, seed: int) -> None:
    """Near miss: the fp16 Trainer of `accum_cleared_trainer_fp16` done right, clearing with
    `model.zero_grad(set_to_none=False)` at the first micro-batch of each group only."""
    _AccumTrainer(run_dir, seed, clear_every_micro_batch=False, set_to_none=False).fit()


FAULTS: dict[str, Fault] = {
    "accum_cleared_every_micro_batch": Fault(accum_cleared_every_micro_batch, "zero-grad-before-step", at=0,
                                             severity="error", quiet=_but("zero-grad-before-step")),
    "accum_cleared_trainer_fp16": Fault(accum_cleared_trainer_fp16, "zero-grad-before-step", at=0,
                                        severity="error", quiet=_but("zero-grad-before-step")),
    "accum_cleared_two_losses": Fault(accum_cleared_two_losses, "zero-grad-before-step", at=0,
                                      severity="error", quiet=_but("zero-grad-before-step")),
    "ref_zero_grad_every_micro_batch": Fault(
        lambda run_dir, seed: _reference(run_dir, seed, inject=["zero-grad-every-micro-batch"]),
        "zero-grad-before-step", at=0, severity="error", quiet=_but("zero-grad-before-step")),
    "sam_first_second_step": Fault(sam_first_second_step, None, quiet=ALL_LOOP),
    "asam_wrapper": Fault(asam_wrapper, None, quiet=ALL_LOOP),
    "fgsm_adversarial_training": Fault(fgsm_adversarial_training, None, quiet=ALL_LOOP),
    "pgd_adversarial_training": Fault(pgd_adversarial_training, None, quiet=ALL_LOOP),
    "saliency_probe_after_step": Fault(saliency_probe_after_step, None, quiet=ALL_LOOP),
    "wgan_gp_critic_iterations": Fault(wgan_gp_critic_iterations, None, quiet=ALL_LOOP),
    "gan_generator_cleared_by_other_optimizer": Fault(gan_generator_cleared_by_other_optimizer, None,
                                                      quiet=ALL_LOOP),
    "lbfgs_closure_loader": Fault(lbfgs_closure_loader, None, quiet=ALL_LOOP),
    "accum_partial_window_cleared": Fault(accum_partial_window_cleared, None, quiet=ALL_LOOP),
    "accum_trainer_set_to_none_false": Fault(accum_trainer_set_to_none_false, None, quiet=ALL_LOOP),
    "ref_accumulation": Fault(lambda run_dir, seed: _reference(run_dir, seed, accum_steps=4), None,
                              quiet=ALL_LOOP),
}


_RECORDINGS = Recordings(FAULTS)
record_fault = _RECORDINGS.record
recorded = _RECORDINGS.recorded
fault_tables = _RECORDINGS.tables

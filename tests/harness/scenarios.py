"""Healthy training runs, written in deliberately different styles, recorded by Monitor.

Every rule must stay silent (nothing at warning or error) on every scenario here, for
several seeds: they cover what real healthy runs do that a naive rule mistakes for a
bug — LR warm-up from 0, gradient accumulation, ReduceLROnPlateau, early stopping,
GradScaler's skipped first steps and growth, tiny noisy batches, a frozen backbone
kept in eval mode, two optimizers, EMA, `model.zero_grad()`, `set_to_none=False`.

`record(name, run_dir, seed)` trains one scenario on CPU in a second or two.
`bench/false_alarms.py` runs them all over several seeds to publish the false-alarm rate.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor

# ---- data ------------------------------------------------------------------------------


def _blobs(n: int, dim: int, classes: int, gen: torch.Generator):
    centers = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, dim, generator=gen)
    return x, y


def _images(n: int, gen: torch.Generator):
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randn(n, 3, 12, 12, generator=gen) * 0.5
    for c in range(4):  # class-dependent bright quadrant
        r, q = divmod(c, 2)
        x[y == c, :, r * 6:(r + 1) * 6, q * 6:(q + 1) * 6] += 1.5
    return x, y


def _sequences(n: int, length: int, gen: torch.Generator):
    x = torch.randn(n, length, 4, generator=gen)
    y = (x[:, :, 0].sum(1) > 0).long()
    return x, y


def _tokens(n: int, length: int, vocab: int, gen: torch.Generator):
    start = torch.randint(0, vocab, (n, 1), generator=gen)
    seq = (start + torch.arange(length + 1)) % vocab  # learnable: next = previous + 1
    noise = torch.rand(n, length + 1, generator=gen) < 0.05
    seq = torch.where(noise, torch.randint(0, vocab, seq.shape, generator=gen), seq)
    return seq[:, :-1], seq[:, 1:]


def shuffled_batches(x, y, batch_size: int, gen: torch.Generator):
    """(x, y) mini-batches in an order drawn from `gen`; an incomplete last batch is dropped."""
    order = torch.randperm(len(x), generator=gen)
    for i in range(0, len(x) - batch_size + 1, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


# ---- models ----------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, classes))

    def forward(self, x):
        return self.head(self.features(x))


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 16, batch_first=True)
        self.out = nn.Linear(16, 2)

    def forward(self, x):
        _, h = self.rnn(x)
        return self.out(h[-1])


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, 16, d))
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.out(self.encoder(h, mask=mask, is_causal=True))


def _mlp(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


# ---- shared pieces ---------------------------------------------------------------------


def _evaluate(mon: Monitor, model: nn.Module, batches, loss_fn, epoch: int) -> float:
    with mon.phase("val"):
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in batches:
                total += loss_fn(model(x), y).item() * len(x)
                count += len(x)
        model.train()
    value = total / max(count, 1)
    mon.log_metrics("val", epoch=epoch, val_loss=value)
    return value


def _ce(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


# ---- the scenarios ---------------------------------------------------------------------


def mlp_adamw_onecycle(run_dir: Path, seed: int) -> None:
    """MLP, AdamW, OneCycleLR per iteration, no AMP, clipping."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(1024, 10, 3, gen)
    vx, vy = _blobs(256, 10, 3, gen)
    model = _mlp(10, 32, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    epochs, bs = 4, 32
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (1024 // bs))
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(epochs):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, bs, gen)):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
            _evaluate(mon, model, shuffled_batches(vx, vy, 64, gen), F.cross_entropy, epoch)


def cnn_sgd_steplr_bf16(run_dir: Path, seed: int) -> None:
    """CNN with BatchNorm and Dropout, SGD momentum, StepLR per epoch, bf16 autocast."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _images(512, gen)
    vx, vy = _images(128, gen)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(4):
            mon.epoch(epoch)
            model.train()
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            _evaluate(mon, model, shuffled_batches(vx, vy, 64, gen), F.cross_entropy, epoch)


def gru_adam_plateau_fp16(run_dir: Path, seed: int) -> None:
    """GRU classifier, Adam, ReduceLROnPlateau on val loss, fp16 + GradScaler('cpu')."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _sequences(512, 12, gen)
    vx, vy = _sequences(128, 12, gen)
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    scaler = torch.amp.GradScaler("cpu")
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched, scaler=scaler) as mon:
        for epoch in range(5):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(xb), yb)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
            val = _evaluate(mon, model, shuffled_batches(vx, vy, 64, gen), F.cross_entropy, epoch)
            sched.step(val)


def transformer_warmup_cosine_accum(run_dir: Path, seed: int) -> None:
    """Tiny causal transformer LM, AdamW, linear warm-up from 0 + cosine (LambdaLR),
    gradient accumulation over 4 micro-batches."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _tokens(512, 16, 16, gen)
    vx, vy = _tokens(64, 16, 16, gen)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    accum, epochs, bs = 4, 3, 8
    total = epochs * (512 // bs) // accum
    warmup = 5

    def schedule(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(epochs):
            mon.epoch(epoch)
            for i, (xb, yb) in enumerate(mon.loader(shuffled_batches(x, y, bs, gen))):
                loss = _ce(model(xb), yb) / accum
                loss.backward()
                if (i + 1) % accum == 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
            _evaluate(mon, model, shuffled_batches(vx, vy, 32, gen), _ce, epoch)


def tiny_noisy_batches(run_dir: Path, seed: int) -> None:
    """Batch size 2: very noisy losses and gradient norms; plain SGD, no scheduler."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(300, 6, 2, gen)
    model = _mlp(6, 16, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 2, gen)):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()


def frozen_backbone(run_dir: Path, seed: int) -> None:
    """A 'pretrained' backbone kept in eval mode with requires_grad off; only the head trains."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _images(384, gen)
    vx, vy = _images(96, gen)
    model = SmallCNN()
    pre = torch.optim.Adam(model.parameters(), lr=1e-2)  # "pretraining", not recorded
    for xb, yb in shuffled_batches(x, y, 32, gen):
        pre.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        pre.step()
    model.head[-1].reset_parameters()  # a new head for the new task
    for p in model.features.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            model.train()
            model.features.eval()  # frozen BatchNorm statistics, on purpose
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            _evaluate(mon, model, shuffled_batches(vx, vy, 48, gen), F.cross_entropy, epoch)


def early_stopping_cosine(run_dir: Path, seed: int) -> None:
    """MLP regression (MSE), CosineAnnealingLR per epoch, early stopping on val loss."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    w = torch.randn(8, 1, generator=gen)
    x = torch.randn(512, 8, generator=gen)
    y = x @ w + 0.3 * torch.randn(512, 1, generator=gen)
    vx = torch.randn(128, 8, generator=gen)
    vy = vx @ w + 0.3 * torch.randn(128, 1, generator=gen)
    model = _mlp(8, 32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    best, patience, bad = math.inf, 2, 0
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(12):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 64, gen)):
                opt.zero_grad()
                F.mse_loss(model(xb), yb).backward()
                opt.step()
            sched.step()
            val = _evaluate(mon, model, shuffled_batches(vx, vy, 64, gen), F.mse_loss, epoch)
            if val < best - 1e-4:
                best, bad = val, 0
            else:
                bad += 1
                if bad >= patience:
                    mon.log_event("early_stop", epoch=epoch, best=best)
                    break


def two_optimizers(run_dir: Path, seed: int) -> None:
    """Encoder and head with separate optimizers (Adam + SGD), stepped back to back."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(640, 8, 4, gen)
    encoder = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
    head = nn.Linear(32, 4)
    model = nn.Sequential(encoder, head)
    opt_enc = torch.optim.Adam(encoder.parameters(), lr=2e-3)
    opt_head = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizers=[opt_enc, opt_head]) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                opt_enc.zero_grad()
                opt_head.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt_enc.step()
                opt_head.step()


def fp16_scaler_growth(run_dir: Path, seed: int) -> None:
    """fp16 + GradScaler with a tiny growth interval: the scale grows, overflows, and
    backs off now and then — normal GradScaler behaviour, not a collapse."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(1024, 12, 3, gen)
    model = _mlp(12, 48, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=20)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=3 * (1024 // 32))
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched, scaler=scaler) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = F.cross_entropy(model(xb), yb)
                scaler.scale(loss).backward()
                scaler.step(opt)  # unscales internally; no clipping in this loop
                scaler.update()
                sched.step()


def ema_accum_bf16(run_dir: Path, seed: int) -> None:
    """CNN, bf16, accumulation 2, EMA weights swapped in for evaluation and restored,
    `model.zero_grad(set_to_none=False)`, CosineAnnealingLR per epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _images(384, gen)
    vx, vy = _images(96, gen)
    model = SmallCNN()
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            for i, (xb, yb) in enumerate(mon.loader(shuffled_batches(x, y, 16, gen))):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(model(xb), yb) / 2
                loss.backward()
                if i % 2 == 1:
                    opt.step()
                    model.zero_grad(set_to_none=False)
                    with torch.no_grad():
                        for pe, pm in zip(ema.parameters(), model.parameters()):
                            pe.lerp_(pm, 0.1)
            sched.step()
            backup = copy.deepcopy(model.state_dict())
            model.load_state_dict(ema.state_dict())
            _evaluate(mon, model, shuffled_batches(vx, vy, 48, gen), F.cross_entropy, epoch)
            model.load_state_dict(backup)


def warmup_from_zero_linear(run_dir: Path, seed: int) -> None:
    """LinearLR warm-up starting at LR factor 0 then constant; Adam; MLP."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(768, 10, 5, gen)
    model = _mlp(10, 32, 5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 10))
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=warm) as mon:
        for epoch in range(3):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
                warm.step()


def long_plain_loop(run_dir: Path, seed: int) -> None:
    """A longer run (600 steps) with a decaying LR: long enough for trend rules to speak,
    and it converges to a noisy floor (the loss stops falling — which is healthy)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(2400, 16, 4, gen)
    vx, vy = _blobs(400, 16, 4, gen)
    model = _mlp(16, 64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(8):
            mon.epoch(epoch)
            for xb, yb in mon.loader(shuffled_batches(x, y, 32, gen)):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
            sched.step()
            _evaluate(mon, model, shuffled_batches(vx, vy, 100, gen), F.cross_entropy, epoch)


HEALTHY: dict[str, Callable[[Path, int], None]] = {
    fn.__name__: fn for fn in (
        mlp_adamw_onecycle, cnn_sgd_steplr_bf16, gru_adam_plateau_fp16,
        transformer_warmup_cosine_accum, tiny_noisy_batches, frozen_backbone,
        early_stopping_cosine, two_optimizers, fp16_scaler_growth, ema_accum_bf16,
        warmup_from_zero_linear, long_plain_loop)
}
"""Every healthy scenario by name."""


def record(name: str, run_dir: Path, seed: int = 0) -> Path:
    """Train healthy scenario `name` into `run_dir` and return it."""
    HEALTHY[name](Path(run_dir), seed)
    return Path(run_dir)

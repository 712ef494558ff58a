"""Training loops for the plugin tests: one healthy way to write each piece, and seeded bugs.

`train(...)` runs `steps` optimizer steps of a small BatchNorm + Dropout classifier; its
keyword switches each inject one bug (call order or mode). `evaluate(...)` likewise.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, n, 8)]


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def build(*, scheduler="step", scaler=None, lr=0.05):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = {"step": lambda: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9),
             "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
             None: lambda: None}[scheduler]()
    amp = {None: lambda: None,
           # fp16 on CPU with a scale this high really overflows: steps 0 and 1 are skipped
           "fp16": lambda: torch.amp.GradScaler("cpu", init_scale=2.0 ** 19),
           "disabled": lambda: torch.amp.GradScaler("cpu", enabled=False)}[scaler]()
    return model, opt, sched, amp


def train(model, opt, sched=None, scaler=None, *, steps=3, accum=1, clip=True, dtype=None,
          zero_grad="start", sched_step="after", unscale=True, clip_at="before_step",
          set_train=True, batches=None):
    """`steps` optimizer steps. Bugs: zero_grad="never"|"before_step", sched_step="before"|"never",
    unscale=False, clip_at="after_step", set_train=False."""
    if set_train:
        model.train()
    batches = batches or data()
    dtype = dtype or (torch.float16 if scaler is not None else None)
    for i, (x, y) in enumerate(batches[:steps * accum]):
        if zero_grad == "start" and i % accum == 0:
            opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y) / accum
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if (i + 1) % accum:
            continue
        if zero_grad == "before_step":
            opt.zero_grad()
        if scaler is not None and unscale:
            scaler.unscale_(opt)
        if clip and clip_at == "before_step":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if sched is not None and sched_step == "before":
            sched.step()
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if clip and clip_at == "after_step":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if zero_grad == "end":
            opt.zero_grad(set_to_none=True)
        if sched is not None and sched_step == "after" and not isinstance(
                sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step()


def evaluate(model, *, eval_mode=True, no_grad=True, restore=True, batches=None):
    was_training = model.training
    if eval_mode:
        model.eval()
    total = 0.0
    with torch.set_grad_enabled(not no_grad):
        for x, y in (batches or data(16, seed=1)):
            total += float(F.cross_entropy(model(x), y))
    if restore and was_training:
        model.train()
    return total

"""Healthy: tabular regression, MSE on (N, 1) predictions against (N, 1) targets and an
L1 metric, bf16 autocast on CPU, gradient accumulation over 4 micro-batches, and a
warm-up + linear-decay LambdaLR stepped once per optimizer step (not per micro-batch)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
g = torch.Generator().manual_seed(7)
X = torch.randn(1024, 12, generator=g)
coef = torch.randn(12, 1, generator=g)
Y = X @ coef + 0.3 * torch.sin(3 * X[:, :1]) + 0.05 * torch.randn(1024, 1, generator=g)

model = nn.Sequential(nn.Linear(12, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
ACCUM, MICRO, EPOCHS = 4, 32, 3
updates_per_epoch = len(X) // (ACCUM * MICRO)
total = EPOCHS * updates_per_epoch
warmup = 2
sched = torch.optim.lr_scheduler.LambdaLR(
    opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / (total - warmup)) + 0.05)

for epoch in range(EPOCHS):
    order = torch.randperm(len(X), generator=g)
    for k, start in enumerate(range(0, len(X), MICRO)):
        idx = order[start:start + MICRO]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(X[idx])
        loss = F.mse_loss(pred.float(), Y[idx]) / ACCUM
        loss.backward()
        if (k + 1) % ACCUM == 0:
            opt.step()
            opt.zero_grad()
            sched.step()
    with torch.no_grad():
        mae = F.l1_loss(model(X[:256]), Y[:256])
    print(f"epoch {epoch} mae {mae.item():.4f} rmse~{math.sqrt(loss.item() * ACCUM):.4f}")

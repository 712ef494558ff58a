"""Healthy: fp16 autocast on CPU with a GradScaler (it really scales, and skips steps whose
gradients overflow), gradient accumulation over 4 micro-batches (loss / 4), unscale_
before clipping, CosineAnnealingLR stepped per optimizer step."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(512, 16)
y = (x @ torch.randn(16, 1)).squeeze(1) + 0.1 * torch.randn(512)

model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
accum, micro = 4, 16
steps = len(x) // (accum * micro)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
scaler = torch.amp.GradScaler("cpu")

for step in range(steps):
    for k in range(accum):
        i = (step * accum + k) * micro
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(x[i:i + micro]).squeeze(1)
        loss = F.mse_loss(pred.float(), y[i:i + micro]) / accum
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
print(f"final loss {loss.item() * accum:.4f} scale {scaler.get_scale()}")

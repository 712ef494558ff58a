"""Bug: with fp16 autocast and a GradScaler (on CPU), gradients are clipped while still
multiplied by the loss scale (65536): every step is clipped to a tiny update."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu")

for i in range(0, 256, 16):
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = F.cross_entropy(model(x[i:i + 16]).float(), y[i:i + 16])
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # BUG: no scaler.unscale_ first
    scaler.step(optimizer)
    scaler.update()
print(f"final loss {loss.item():.4f}")

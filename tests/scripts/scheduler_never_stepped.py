"""Bug: a cosine schedule is created but scheduler.step() is never called, so the
learning rate stays at its initial value for the whole run."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=16)

for i in range(0, 256, 16):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
    loss.backward()
    optimizer.step()
    # BUG: scheduler.step() forgotten
print(f"final loss {loss.item():.4f} lr {optimizer.param_groups[0]['lr']}")

"""Bug: lr_scheduler.step() is called before optimizer.step() in every iteration, so the
first value of the schedule is skipped (torch also warns about it)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)

for i in range(0, 256, 16):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
    loss.backward()
    scheduler.step()  # BUG: before optimizer.step()
    optimizer.step()
print(f"final loss {loss.item():.4f}")

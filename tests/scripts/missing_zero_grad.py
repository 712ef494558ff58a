"""Bug: gradients are never cleared, so every step uses the sum of all gradients so far."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(320, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

for i in range(0, 320, 16):
    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
    loss.backward()  # BUG: no optimizer.zero_grad() anywhere
    optimizer.step()
print(f"final loss {loss.item():.4f}")

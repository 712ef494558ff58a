"""Bug: the gradients are cleared between backward() and optimizer.step(), so the
optimizer steps with no gradients and the weights never change."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

for i in range(0, 256, 16):
    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
    loss.backward()
    optimizer.zero_grad()  # BUG: between backward and step
    optimizer.step()
print(f"final loss {loss.item():.4f}")

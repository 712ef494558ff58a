"""Bug: the first layer's param group got LR 1e-9 (meant 1e-4): it keeps its initial
weights while the rest of the network trains. 100 steps: update norms are sampled every
25 steps by default, so the rule sees 4 samples."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
centers = torch.randn(3, 10) * 2
y = torch.randint(0, 3, (3200,))
x = centers[y] + torch.randn(3200, 10)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
optimizer = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-9},
                               {"params": model[2].parameters()}], lr=1e-3)

for step in range(100):
    xb, yb = x[step * 32:(step + 1) * 32], y[step * 32:(step + 1) * 32]
    optimizer.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    optimizer.step()
print(f"final loss {loss.item():.4f}")

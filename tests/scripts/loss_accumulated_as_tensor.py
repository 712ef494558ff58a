"""Bug: the running loss is summed as a tensor (`total_loss += loss`, not `loss.item()`).
With `backward(retain_graph=True)` (added once to silence an error), every step's graph
and its saved activations stay reachable from `total_loss`: memory grows step after step
(about 1.5 MB per step here)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
teacher = torch.randn(256, 4)
model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                      nn.Linear(1024, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
total_loss = 0
for step in range(60):
    x = torch.randn(128, 256)
    y = (x @ teacher).argmax(1)
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)
    optimizer.step()
    total_loss += loss  # BUG: keeps the graph (and its activations) of every step
print(f"mean loss {(total_loss / 60).item():.4f}")

"""Healthy: a torch.compile'd MLP (backend "aot_eager": dynamo captures the graph as with
the default inductor backend, without inductor's ~20 s C++ build on a small CPU), AdamW,
validation through the compiled model in eval mode under no_grad."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
compiled = torch.compile(model, backend="aot_eager")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

for epoch in range(2):
    compiled.train()
    for i in range(0, 192, 32):
        optimizer.zero_grad()
        loss = F.cross_entropy(compiled(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        optimizer.step()
    compiled.eval()
    with torch.no_grad():
        val_loss = F.cross_entropy(compiled(x[192:]), y[192:])
    print(f"epoch {epoch} loss {loss.item():.4f} val_loss {val_loss.item():.4f}")

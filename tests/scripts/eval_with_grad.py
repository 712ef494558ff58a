"""Bug: validation in eval mode but with autograd on (no torch.no_grad()): every
validation batch builds a graph, costing memory and time for nothing."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(320, 10)
y = (x[:, :3].sum(1) > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

for epoch in range(3):
    model.train()
    for i in range(0, 256, 32):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        optimizer.step()
    model.eval()
    val_loss = 0.0
    for j in range(256, 320, 32):  # BUG: no torch.no_grad()
        val_loss += F.cross_entropy(model(x[j:j + 32]), y[j:j + 32]).item()
    print(f"epoch {epoch} val_loss {val_loss / 2:.4f}")

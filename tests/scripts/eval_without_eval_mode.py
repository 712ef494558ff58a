"""Bug: validation runs under no_grad but the model stays in training mode, so Dropout
drops units and BatchNorm uses (and updates!) batch statistics during evaluation."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(320, 10)
y = (x[:, :3].sum(1) > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5),
                      nn.Linear(32, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

for epoch in range(3):
    model.train()
    for i in range(0, 256, 32):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # BUG: no model.eval()
        val_loss = F.cross_entropy(model(x[256:]), y[256:])
    print(f"epoch {epoch} val_loss {val_loss.item():.4f}")

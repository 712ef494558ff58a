"""Bug: model.train() is called once before the loop; after the first validation the
model stays in eval mode, so later epochs train without Dropout and with frozen
BatchNorm statistics."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(320, 10)
y = (x[:, :3].sum(1) > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3),
                      nn.Linear(32, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

model.train()  # BUG: only once, outside the epoch loop
for epoch in range(3):
    for i in range(0, 256, 32):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = F.cross_entropy(model(x[256:]), y[256:])
    print(f"epoch {epoch} val_loss {val_loss.item():.4f}")

"""Bug: gradient accumulation that does not accumulate. `optimizer.zero_grad()` runs at the
top of every micro-batch while `optimizer.step()` runs every 4th, so each step uses only
the last micro-batch's gradient and the other 3 backward passes are thrown away."""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x = torch.randn(512, 10)
y = (x[:, :3].sum(1) > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 2))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
accum = 4

for epoch in range(2):
    model.train()
    for i, (xb, yb) in enumerate(loader):
        optimizer.zero_grad()  # BUG: should only run after a step
        loss = criterion(model(xb), yb) / accum
        loss.backward()
        if (i + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    print(f"epoch {epoch}: loss {loss.item() * accum:.4f} acc {acc:.3f}")

"""Bug: OneCycleLR is configured for every iteration (total_steps = epochs x batches) but
stepped once per epoch, so the run ends still in warm-up, far from the configured end."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(256, 8)
y = (x.sum(1) > 0).long()
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
epochs, batches = 4, 8
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1,
                                                total_steps=epochs * batches)
for epoch in range(epochs):
    for b in range(batches):
        i = b * 32
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        optimizer.step()
    scheduler.step()  # BUG: once per epoch
print(f"final loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.5f}")

"""Healthy: GRU sequence classifier, Adam, ReduceLROnPlateau stepped on the validation loss
each epoch, gradient clipping, model.zero_grad() instead of optimizer.zero_grad()."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 24, batch_first=True)
        self.out = nn.Linear(24, 2)

    def forward(self, x):
        _, h = self.gru(x)
        return self.out(h[-1])


torch.manual_seed(0)
x = torch.randn(320, 12, 4)
y = (x[:, :, 0].sum(1) > 0).long()
train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32, shuffle=True)
val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64)

model = GRUClassifier()
optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)

for epoch in range(3):
    model.train()
    for xb, yb in train:
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = sum(F.cross_entropy(model(xb), yb).item() for xb, yb in val)
    plateau.step(val_loss)
    print(f"epoch {epoch} val_loss {val_loss!r}")

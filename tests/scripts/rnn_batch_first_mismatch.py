"""Buggy: an nn.LSTM built with the default batch_first=False is fed the DataLoader's
batch-major (batch, seq, features) tensors, so it recurs across the batch."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 24)            # batch_first=False
        self.head = nn.Linear(24, 2)

    def forward(self, x):                     # x: (batch, seq, 3)
        out, _ = self.lstm(x)
        return self.head(out[:, -1])           # "last time step" of each "sample"


torch.manual_seed(0)
x = torch.randn(384, 15, 3)
y = (x[:, :, 1].mean(1) > 0).long()
train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)

model = Classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(2):
    for xb, yb in train:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")

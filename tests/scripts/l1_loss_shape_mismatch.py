"""Bug: a price regressor written with a hand-made loss: F.l1_loss(pred, target) where the
model returns (N, 1) and the target column is (N,). Broadcasting makes an (N, N) matrix
of differences, so the model learns the median price of the batch."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
features = torch.randn(512, 5)
price = features @ torch.tensor([3.0, -2.0, 1.0, 0.5, 0.0]) + 10.0  # shape (512,)
loader = DataLoader(TensorDataset(features, price), batch_size=64, shuffle=True)

model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)


def robust_loss(pred, target):
    return F.l1_loss(pred, target)  # BUG: (64, 1) vs (64,)


for epoch in range(3):
    for xb, yb in loader:
        loss = robust_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} l1 {loss.item():.3f}")

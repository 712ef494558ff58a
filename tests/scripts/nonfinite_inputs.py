"""Bug: one corrupted training sample (a NaN feature) sits in the dataset; the DataLoader
delivers it in the batch of step 8, and with no GradScaler the NaN poisons the weights.
The validation set holds an Inf too: evaluated under no_grad, it is not training data."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
x = torch.randn(512, 8)
y = (x.sum(1) > 0).long()
x[8 * 16 + 3, 2] = float("nan")  # one bad value in the batch of step 8
vx = torch.randn(64, 8)
vy = (vx.sum(1) > 0).long()
vx[5, 0] = float("inf")
train = DataLoader(TensorDataset(x, y), batch_size=16)
val = DataLoader(TensorDataset(vx, vy), batch_size=32)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

model.train()
for xb, yb in train:  # 32 steps
    optimizer.zero_grad()
    loss = F.cross_entropy(model(xb), yb)
    loss.backward()
    optimizer.step()
model.eval()
with torch.no_grad():
    for xb, yb in val:
        print(f"val loss {F.cross_entropy(model(xb), yb).item()}")

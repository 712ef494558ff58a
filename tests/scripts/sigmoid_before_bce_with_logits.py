"""Bug: a binary classifier whose network ends with nn.Sigmoid(), trained with
nn.BCEWithLogitsLoss (which applies the sigmoid itself): the loss sees sigmoid(sigmoid(z)),
whose output is stuck in [0.5, 0.73], so the loss cannot fall below ~0.47 and the
gradients are squashed."""
import torch
from torch import nn
from torch.utils.data import DataLoader, random_split, TensorDataset

torch.manual_seed(0)
X = torch.randn(800, 12)
y = ((X[:, 0] * X[:, 1] + X[:, 2]) > 0).float().unsqueeze(1)
train_set, val_set = random_split(TensorDataset(X, y), [640, 160])
train_loader = DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True)

net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1), nn.Sigmoid())
criterion = nn.BCEWithLogitsLoss()  # BUG: the model already applies the sigmoid
optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)

for epoch in range(3):
    net.train()
    for xb, yb in train_loader:
        optimizer.zero_grad()
        loss = criterion(net(xb), yb)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        xv, yv = val_set[:]
        acc = ((net(xv) > 0.5).float() == yv).float().mean()
    print(f"epoch {epoch} loss {loss.item():.3f} val acc {acc.item():.2f}")

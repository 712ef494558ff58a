"""Bug: a validation pass every 10 batches in the middle of the epoch switches the model to
eval() and never back; the model.train() at the top of the epoch only fixes the first
batches of the next epoch, so most steps train without Dropout/BatchNorm updates."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(1000, 20)
Y = (X[:, :4].sum(1) > 0).long()
train_dl = DataLoader(TensorDataset(X[:800], Y[:800]), batch_size=32, shuffle=True)
val_dl = DataLoader(TensorDataset(X[800:], Y[800:]), batch_size=100)

net = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.5),
                    nn.Linear(64, 2))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
crit = nn.CrossEntropyLoss()


def validate():
    net.eval()
    total = 0.0
    with torch.no_grad():
        for xb, yb in val_dl:
            total += crit(net(xb), yb).item()
    return total / len(val_dl)


for epoch in range(2):
    net.train()
    for it, (xb, yb) in enumerate(train_dl):
        opt.zero_grad()
        loss = crit(net(xb), yb)
        loss.backward()
        opt.step()
        if it % 10 == 9:
            print(f"epoch {epoch} it {it} val {validate():.3f}")  # BUG: net stays in eval()

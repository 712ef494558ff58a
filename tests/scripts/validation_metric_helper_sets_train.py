"""Bug: `validate()` puts the model in eval mode, but the per-batch metric helper it calls
was written for a training dashboard and ends with `model.train()`: from the second
validation batch on, BatchNorm and Dropout run in training mode (BatchNorm's running
statistics are updated with validation data)."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(67)

X = torch.randn(1400, 24)
y = (X[:, :6].sum(1) + 0.5 * X[:, 6] * X[:, 7] > 0).long()
train = DataLoader(TensorDataset(X[:1000], y[:1000]), batch_size=50, shuffle=True)
val = DataLoader(TensorDataset(X[1000:], y[1000:]), batch_size=100)

model = nn.Sequential(nn.Linear(24, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 2))
opt = torch.optim.Adam(model.parameters(), lr=2e-3)


def batch_metrics(model, logits, target):
    acc = (logits.argmax(1) == target).float().mean().item()
    model.train()                            # BUG: "back to training" inside a helper
    return acc


def validate(model):
    model.eval()
    accs = []
    with torch.no_grad():
        for xb, yb in val:
            accs.append(batch_metrics(model, model(xb), yb))
    return sum(accs) / len(accs)


for epoch in range(4):
    model.train()
    for xb, yb in train:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item():.3f} val acc {validate(model):.3f}")

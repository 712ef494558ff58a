"""Bug: the Trainer's `validate()` is decorated with @torch.no_grad() but never calls
self.model.eval(), so every validation pass runs with Dropout active and BatchNorm using
(and updating) batch statistics; the reported val accuracy is noisy and the running stats
drift toward the validation set."""
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)


class Trainer:
    def __init__(self, model, lr=1e-3):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.loss_fn = nn.CrossEntropyLoss()
        self.history = []

    def _step(self, xb, yb):
        self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @torch.no_grad()
    def validate(self, loader):
        hits = n = 0
        for xb, yb in loader:                       # BUG: no self.model.eval()
            hits += (self.model(xb).argmax(-1) == yb).sum().item()
            n += len(yb)
        return hits / n

    def fit(self, train_loader, val_loader, epochs):
        for ep in range(epochs):
            self.model.train()
            losses = [self._step(xb, yb) for xb, yb in train_loader]
            acc = self.validate(val_loader)
            self.history.append((sum(losses) / len(losses), acc))
            print(f"[{ep}] loss={self.history[-1][0]:.3f} val_acc={acc:.3f}")


if __name__ == "__main__":
    torch.manual_seed(8)
    X = torch.randn(900, 16)
    y = (X[:, :3].sum(1) > X[:, 3:6].sum(1)).long()
    train = DataLoader(TensorDataset(X[:768], y[:768]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(X[768:], y[768:]), batch_size=66)
    net = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Dropout(0.3),
                        nn.Linear(64, 2))
    Trainer(net).fit(train, val, epochs=3)

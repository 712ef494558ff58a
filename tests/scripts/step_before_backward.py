"""Bug: the update order got shuffled in a refactor: `optimizer.zero_grad()`, then
`optimizer.step()`, then `loss.backward()`. Every step runs on the gradients that were
just cleared (None), so the model never changes; the backward's gradients are thrown
away by the next iteration's zero_grad."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(97)

X = torch.randn(960, 14)
y = (X[:, 0] * X[:, 1] > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(14, 64), nn.ReLU(), nn.Linear(64, 2))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)


def train_step(xb, yb):
    optimizer.zero_grad()
    logits = model(xb)
    loss = nn.functional.cross_entropy(logits, yb)
    optimizer.step()                # BUG: before backward
    loss.backward()
    return loss.item()


for epoch in range(2):
    losses = [train_step(xb, yb) for xb, yb in loader]
    print(f"epoch {epoch} mean loss {sum(losses) / len(losses):.4f}")

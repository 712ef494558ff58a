"""Bug: a "fix" for `element 0 of tensors does not require grad` (raised once, when the
loss was built from detached logits): the author made the error go away with
`loss = loss.detach().requires_grad_()`. backward() now runs without error and reaches no
parameter: the optimizer steps every batch and the model never changes."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(53)

X = torch.randn(1200, 16)
y = (X[:, :3].sum(1) > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=48, shuffle=True)
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)

for epoch in range(2):
    for xb, yb in loader:
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        loss = loss.detach().requires_grad_()     # BUG: cuts the graph
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")

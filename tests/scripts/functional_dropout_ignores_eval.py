"""Bug: the model calls `F.dropout(h, p=0.5)` in forward() without
`training=self.training` (F.dropout defaults to training=True), so model.eval() does not
switch it off: validation runs with half of the hidden units dropped at random."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(37)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 64)
        self.fc2 = nn.Linear(64, 3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.dropout(h, p=0.5)          # BUG: training=self.training missing
        return self.fc2(h)


X = torch.randn(900, 10)
y = X[:, :3].argmax(1)
model = MLP()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for epoch in range(4):
    model.train()
    for i in range(0, 768, 64):
        opt.zero_grad()
        loss = F.cross_entropy(model(X[i:i + 64]), y[i:i + 64])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val = F.cross_entropy(model(X[768:]), y[768:]).item()
    print(f"epoch {epoch} train {loss.item():.3f} val {val:.3f}")

"""Bug: the optimizer is built from the encoder's parameters only; the classifier head
still requires grad and receives gradients every step but is never updated (frozen by
accident, not on purpose)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


torch.manual_seed(0)
x = torch.randn(256, 8)
y = torch.randint(0, 3, (256,))
model = Net()
optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-3)  # BUG: head left out
for i in range(0, 256, 16):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
    loss.backward()
    optimizer.step()
print(f"final loss {loss.item():.4f}")

"""Bug: transfer learning where the optimizer is created from the backbone model, and
the classifier head is replaced with a new nn.Linear for the new number of classes *after*
that: the new head's weights get gradients every step but are in no optimizer, so they
stay at their random initialisation."""
import torch
import torch.nn as nn

torch.set_num_threads(1)
torch.manual_seed(19)


class Net(nn.Module):
    def __init__(self, n_out=10):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.fc = nn.Linear(64, n_out)

    def forward(self, x):
        return self.fc(self.features(x))


net = Net()
optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
net.fc = nn.Linear(64, 3)              # BUG: new head after the optimizer was built

X = torch.randn(960, 20)
y = (X[:, :3] * torch.tensor([1.0, -1.0, 0.5])).argmax(1)
for epoch in range(3):
    perm = torch.randperm(960)
    for i in range(0, 960, 64):
        b = perm[i:i + 64]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(X[b]), y[b])
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch}: {loss.item():.4f}")

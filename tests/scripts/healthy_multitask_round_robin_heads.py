"""Multi-task learning with a shared trunk and three task heads, trained round-robin: each
batch comes from one task only, so only that task's head gets a gradient. Gradients are
cleared with `optimizer.zero_grad(set_to_none=False)` (a habit from older PyTorch), so the
two idle heads hold exact zeros on two steps out of three. SGD with momentum. Healthy."""
import itertools

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(23)


class Shared(nn.Module):
    def __init__(self, tasks):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.heads = nn.ModuleDict({name: nn.Linear(64, k) for name, k in tasks.items()})

    def forward(self, x, task):
        return self.heads[task](self.trunk(x))


tasks = {"sentiment": 2, "topic": 5, "length": 3}
X = torch.randn(900, 12)
targets = {
    "sentiment": (X[:, 0] > 0).long(),
    "topic": X[:, 1:6].argmax(1),
    "length": torch.bucketize(X[:, 6].contiguous(), torch.tensor([-0.5, 0.5])),
}
model = Shared(tasks)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
crit = nn.CrossEntropyLoss()

schedule = itertools.cycle(tasks)
for it in range(90):
    task = next(schedule)
    idx = torch.randint(0, 900, (48,))
    opt.zero_grad(set_to_none=False)
    loss = crit(model(X[idx], task), targets[task][idx])
    loss.backward()
    opt.step()
    if it % 15 == 0:
        print(f"it {it:3d} {task:9s} loss {loss.item():.3f}")

"""Bug: the data preparation shuffles the feature list and the label list each with its
own `random.shuffle`, so features and labels no longer match and there is nothing to
learn: the loss stays at chance level (ln 4 ~ 1.39) for the whole run."""
import random

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(27)
random.seed(27)

rows = [torch.randn(10) for _ in range(1200)]
labels = [int(r[:4].argmax()) for r in rows]
random.shuffle(rows)        # BUG: shuffled apart
random.shuffle(labels)

X = torch.stack(rows)
y = torch.tensor(labels)
model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 4))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(3):
    for i in range(0, 1200, 50):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X[i:i + 50]), y[i:i + 50])
        loss.backward()
        opt.step()
    print(f"epoch {epoch} loss {loss.item():.3f}")

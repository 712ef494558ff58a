"""Bug: a siamese network with a contrastive loss on Euclidean distances written as
`(a - b).pow(2).sum(1).sqrt()`. Positive pairs include identical inputs (an image paired
with itself), the distance is exactly 0, and d sqrt/dx at 0 is inf: the loss stays finite
but the gradients become NaN and the weights are NaN after the step."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(73)

embed = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
opt = torch.optim.Adam(embed.parameters(), lr=1e-3)
X = torch.randn(500, 16)
cls = (X[:, 0] > 0).long()

for step in range(40):
    i = torch.randint(0, 500, (32,))
    j = torch.randint(0, 500, (32,))
    if step >= 12:
        j[:4] = i[:4]                           # self-pairs from here on (a "hard positive" mining change)
    same = (cls[i] == cls[j]).float()
    d = (embed(X[i]) - embed(X[j])).pow(2).sum(1).sqrt()   # BUG: no eps inside the sqrt
    loss = (same * d.pow(2) + (1 - same) * torch.clamp(1.0 - d, min=0).pow(2)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 5 == 0:
        print(step, loss.item())

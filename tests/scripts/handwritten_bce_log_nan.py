"""Bug: a binary cross entropy written by hand on sigmoid probabilities,
`-(y * log(p) + (1 - y) * log(1 - p))`, with no clamp. On separable, unnormalised
features the logits grow past ~17, sigmoid rounds to exactly 1.0 in float32, log(1 - p) is
-inf, and 0 * -inf makes the loss NaN from then on (weights turn NaN after the step).
The fix is F.binary_cross_entropy_with_logits (or clamping p)."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(4)

X = torch.randn(1024, 5) * 4           # unnormalised features
y = (X[:, 0] > 0).float()
model = nn.Linear(5, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.5)


def my_bce(logits, target):
    p = torch.sigmoid(logits).squeeze(1)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


for step in range(40):
    idx = torch.randint(0, 1024, (64,))
    loss = my_bce(model(X[idx]), y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"step {step} loss {loss.item():.4f}")

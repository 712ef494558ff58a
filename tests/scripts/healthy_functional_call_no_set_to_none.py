"""A meta-learning flavoured loop: the model's forward runs through
`torch.func.functional_call(model, params, x)` with its own parameters (as a MAML outer
loop would), the optimizer is plain Adagrad over model.parameters(), and gradients are
cleared with `zero_grad(set_to_none=False)` (zeros kept in place), plus an L2 penalty
computed by hand. Validation under no_grad in eval mode each 'epoch'. Healthy."""
import torch
from torch import nn
from torch.func import functional_call

torch.set_num_threads(1)
torch.manual_seed(21)

X = torch.randn(600, 6)
Y = torch.stack([X[:, 0] - X[:, 1], X[:, 2] * X[:, 3]], 1)
Xtr, Ytr, Xva, Yva = X[:500], Y[:500], X[500:], Y[500:]

model = nn.Sequential(nn.Linear(6, 40), nn.SiLU(), nn.Dropout(0.05), nn.Linear(40, 2))
opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

for epoch in range(4):
    model.train()
    params = dict(model.named_parameters())
    for i in range(0, 500, 50):
        pred = functional_call(model, params, (Xtr[i:i + 50],))
        l2 = sum((w ** 2).sum() for n, w in params.items() if n.endswith("weight"))
        loss = nn.functional.smooth_l1_loss(pred, Ytr[i:i + 50]) + 1e-4 * l2
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val = nn.functional.smooth_l1_loss(model(Xva), Yva).item()
    print(f"epoch {epoch} train {loss.item():.4f} val {val:.4f}")

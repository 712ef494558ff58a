"""Healthy: multi-task regression + classification with learnable homoscedastic-uncertainty
weights (Kendall et al.): loss = sum exp(-s_i) * L_i + s_i. The log-variances s_i are
parameters of their own optimizer group without weight decay, so the total loss goes
negative as training proceeds, which is expected."""
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(17)

N = 3000
X = torch.randn(N, 12)
y_reg = X[:, :4].sum(1, keepdim=True) * 0.5 + 0.05 * torch.randn(N, 1)
y_cls = (X[:, 4:8].sum(1) > 0).long()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(12, 64), nn.GELU(), nn.LayerNorm(64))
        self.reg = nn.Linear(64, 1)
        self.cls = nn.Linear(64, 2)
        self.log_vars = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        h = self.trunk(x)
        return self.reg(h), self.cls(h)


model = TwoHeads()
decay = [p for n, p in model.named_parameters() if n != "log_vars" and p.ndim > 1]
no_decay = [p for n, p in model.named_parameters() if n == "log_vars" or p.ndim == 1]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-2},
                         {"params": no_decay, "weight_decay": 0.0}], lr=3e-3)

perm = torch.randperm(N)
for epoch in range(4):
    for i in range(0, N, 100):
        idx = perm[i:i + 100]
        reg, logits = model(X[idx])
        losses = torch.stack([F.mse_loss(reg, y_reg[idx]), F.cross_entropy(logits, y_cls[idx])])
        total = (torch.exp(-model.log_vars) * losses + model.log_vars).sum()
        opt.zero_grad()
        total.backward()
        opt.step()
    print(f"epoch {epoch} total {total.item():.3f} sigma {model.log_vars.exp().sqrt().tolist()}")

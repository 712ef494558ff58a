"""Gradual unfreezing: a "pretrained" backbone (trained first on a proxy task in this same
script, then frozen with requires_grad_(False)) gets a new head; after two epochs the
backbone is unfrozen and added to the optimizer with `opt.add_param_group` at a 10x lower
learning rate. Multi-task: the head has two outputs (a class and a regression target),
the loss is a weighted sum. Healthy."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(5)

X = torch.randn(640, 10)
cls = (X[:, 0] * X[:, 1] > 0).long()
reg = (X[:, 2:5].sum(1, keepdim=True)).tanh()

backbone = nn.Sequential(nn.Linear(10, 48), nn.LayerNorm(48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU())

# "pretraining" the backbone on a proxy target (its own little head, then thrown away)
proxy = nn.Linear(48, 1)
pre_opt = torch.optim.Adam(list(backbone.parameters()) + list(proxy.parameters()), lr=3e-3)
for i in range(15):
    xb = X[torch.randint(0, 640, (64,))]
    pre_loss = F.mse_loss(proxy(backbone(xb)), xb[:, :1] ** 2)
    pre_opt.zero_grad()
    pre_loss.backward()
    pre_opt.step()
print(f"pretrain done, loss {pre_loss.item():.3f}")


class TwoHeads(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body
        self.cls_head = nn.Linear(48, 2)
        self.reg_head = nn.Linear(48, 1)

    def forward(self, x):
        h = self.body(x)
        return self.cls_head(h), self.reg_head(h)


model = TwoHeads(backbone)
for p in model.body.parameters():
    p.requires_grad_(False)
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)

for epoch in range(5):
    if epoch == 2:
        for p in model.body.parameters():
            p.requires_grad_(True)
        opt.add_param_group({"params": list(model.body.parameters()), "lr": 5e-4})
        print("unfroze the backbone")
    model.train()
    perm = torch.randperm(512)
    for b in range(0, 512, 64):
        idx = perm[b:b + 64]
        logits, value = model(X[idx])
        loss = F.cross_entropy(logits, cls[idx]) + 0.5 * F.mse_loss(value, reg[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits, value = model(X[512:])
        acc = (logits.argmax(1) == cls[512:]).float().mean()
        mse = F.mse_loss(value, reg[512:])
    print(f"epoch {epoch} acc {acc:.3f} mse {mse:.4f}")

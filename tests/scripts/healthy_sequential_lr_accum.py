"""Healthy: warm-up then cosine through SequentialLR (LinearLR for 5 updates, then
CosineAnnealingLR), stepped once per optimizer update; gradient accumulation over 3
micro-batches with an update for the remainder at the end of each epoch (10 micro-batches:
updates after 3, 6, 9 and 10); two losses per micro-batch, each with its own backward()
(an auxiliary reconstruction head, retain_graph on the first)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(400, 16)
y = (x[:, :5].sum(1) > 0).long()
encoder = nn.Sequential(nn.Linear(16, 48), nn.ReLU())
cls_head, rec_head = nn.Linear(48, 2), nn.Linear(48, 16)
params = [*encoder.parameters(), *cls_head.parameters(), *rec_head.parameters()]
opt = torch.optim.AdamW(params, lr=3e-3)
ACCUM, MICRO, EPOCHS = 3, 40, 3
micro_per_epoch = len(x) // MICRO
updates = EPOCHS * -(-micro_per_epoch // ACCUM)
warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=5)
cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=updates - 5, eta_min=1e-5)
sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], milestones=[5])

for epoch in range(EPOCHS):
    perm = torch.randperm(len(x))
    opt.zero_grad()
    for k in range(micro_per_epoch):
        idx = perm[k * MICRO:(k + 1) * MICRO]
        h = encoder(x[idx])
        cls_loss = F.cross_entropy(cls_head(h), y[idx]) / ACCUM
        rec_loss = 0.1 * F.mse_loss(rec_head(h), x[idx]) / ACCUM
        cls_loss.backward(retain_graph=True)
        rec_loss.backward()
        if (k + 1) % ACCUM == 0 or k + 1 == micro_per_epoch:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    print(f"epoch {epoch} cls {cls_loss.item() * ACCUM:.3f} lr {sched.get_last_lr()[0]:.2e}")

"""A tiny pre-norm transformer encoder for sequence classification whose blocks run under
activation checkpointing (torch.utils.checkpoint, non-reentrant), trained with AdamW and
CosineAnnealingWarmRestarts stepped with a fractional epoch every batch
(`sched.step(epoch + i / iters)`, as its documentation shows). Healthy."""
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

torch.set_num_threads(1)
torch.manual_seed(7)

VOCAB, SEQ, DIM = 20, 12, 32


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(DIM)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.ln2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.zeros(1, SEQ, DIM))
        self.blocks = nn.ModuleList([Block() for _ in range(2)])
        self.head = nn.Linear(DIM, 2)

    def forward(self, ids):
        x = self.tok(ids) + self.pos
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.training else blk(x)
        return self.head(x.mean(1))


def batch(n):
    ids = torch.randint(0, VOCAB, (n, SEQ))
    return ids, (ids == 3).any(1).long()   # does token 3 occur?


model = Classifier()
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=2, T_mult=1, eta_min=1e-4)
iters = 10
val_ids, val_y = batch(128)
for epoch in range(4):
    model.train()
    for i in range(iters):
        ids, y = batch(32)
        loss = nn.functional.cross_entropy(model(ids), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(epoch + i / iters)
    model.eval()
    with torch.no_grad():
        acc = (model(val_ids).argmax(1) == val_y).float().mean().item()
    print(f"epoch {epoch} loss {loss.item():.3f} val_acc {acc:.3f} lr {sched.get_last_lr()[0]:.2e}")
assert math.isfinite(loss.item())

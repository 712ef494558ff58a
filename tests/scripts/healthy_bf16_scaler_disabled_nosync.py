"""Healthy: one code path for fp16 and bf16. With bf16 the script keeps its GradScaler
but builds it with enabled=False (scale() returns the loss unchanged, unscale_ does
nothing), so clipping after `scaler.unscale_` is right either way; accumulation over 4
micro-batches uses a `no_sync()`-style context (a nullcontext outside DDP) on all but the
last; a linear warm-up then decay by hand via `param_group["lr"]`."""
import contextlib

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(31)

dtype = torch.bfloat16
use_scaler = dtype == torch.float16

X = torch.randn(4096, 32)
y = (X[:, :8] * X[:, 8:16]).sum(1, keepdim=True) / 4


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Dropout(0.1), nn.Linear(128, 128),
                                    nn.GELU(), nn.Linear(128, 1))

    def forward(self, x):
        return self.layers(x)

    def no_sync(self):                    # DDP's API, for the single-process path
        return contextlib.nullcontext()


model = Net()
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
scaler = torch.amp.GradScaler("cpu", enabled=use_scaler)
accum, micro, base_lr, total_updates = 4, 32, 2e-3, 40

for update in range(total_updates):
    warm = min(1.0, (update + 1) / 5)
    decay = 1 - update / total_updates
    for group in opt.param_groups:
        group["lr"] = base_lr * warm * max(decay, 0.05)
    for k in range(accum):
        idx = torch.randint(0, len(X), (micro,))
        ctx = model.no_sync() if k < accum - 1 else contextlib.nullcontext()
        with ctx, torch.autocast("cpu", dtype=dtype):
            loss = nn.functional.mse_loss(model(X[idx]).float(), y[idx]) / accum
        scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    if update % 10 == 0:
        print(f"update {update} loss {loss.item() * accum:.4f}")

"""Faulty loops and near misses for `nonfinite-inputs` and `update-ratio`.

Each fault is written in more than one style: hand-written loops instrumented with
`Monitor` (dict batches from a generator, a `DataLoader` of tuples, AdamW and SGD,
param groups) and the reference loop's injection; the zero-code mode's plain scripts
live in tests/scripts/ (nonfinite_inputs.py, update_ratio_tiny_lr_group.py). The near
misses are healthy loops a naive rule would flag: additive attention masks holding -Inf,
NaN in evaluation batches, a warm-up from LR 0 with a cosine down to 0, a frozen layer
and a layer without gradients, a backbone at 1/100 of the head's LR, fine-tuning at LR
1e-6, fp16 with a GradScaler that skips steps.

`record_fault(name, run_dir, seed)` records one on CPU (one torch thread) in about a
second. `FAULTS[name].rule` is the rule it must trigger (None for a near miss), `.at` the
first step where it shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from diagnose import Monitor
from tests.harness.faults_loop import _reference
from tests.harness.threads import one_torch_thread

STEPS = 40
PARAM_EVERY = 5
"""Update norms every 5 steps: 8 samples in a 40-step loop."""


def _blobs(seed: int, n: int = STEPS * 32, dim: int = 10, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return centers[y] + torch.randn(n, dim, generator=gen), y


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


# ---- nonfinite-inputs ----------------------------------------------------------------------

def _token_batches(seed: int, bad_at: int | None, n: int = STEPS):
    """A text pipeline's dict batches: token ids, float features, an additive causal mask
    ({0, -inf}) and a named padding mask with -inf; NaN features at step `bad_at`."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(n):
        ids = torch.randint(0, 16, (8, 6), generator=gen)
        feats = torch.randn(8, 6, generator=gen)
        if step == bad_at:
            feats[3] = float("nan")
        yield {"ids": ids, "feats": feats, "causal": torch.full((6, 6), float("-inf")).triu(1),
               "pad_mask": torch.where(ids == 0, float("-inf"), 0.5), "y": (ids[:, 0] % 3)}


class _TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(16, 6), nn.Linear(12, 3)

    def forward(self, ids, feats):
        return self.head(torch.cat([self.embed(ids).mean(1), feats], 1))


def _dict_batch_loop(run_dir: Path, seed: int, bad_at: int | None, eval_bad: bool = False) -> None:
    torch.manual_seed(seed)
    model = _TokenModel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=PARAM_EVERY) as mon:
        for batch in mon.loader(_token_batches(seed, bad_at)):
            opt.zero_grad()
            F.cross_entropy(model(batch["ids"], batch["feats"]), batch["y"]).backward()
            opt.step()
        with mon.phase("val"), torch.no_grad():
            model.eval()
            for batch in mon.loader(_token_batches(seed + 1, 0 if eval_bad else None, 3)):
                model(batch["ids"], batch["feats"])
            model.train()


def nan_features_dict_batch(run_dir: Path, seed: int) -> None:
    """NaN features in one dict batch (step 12): the loss and the weights turn NaN."""
    _dict_batch_loop(run_dir, seed, bad_at=12)


def inf_sample_dataloader(run_dir: Path, seed: int) -> None:
    """A DataLoader of (x, y) tuples with an Inf in one sample (batch of step 5), SGD."""
    torch.manual_seed(seed)
    x, y = _blobs(seed)
    x[5 * 32 + 7, 4] = float("inf")
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=PARAM_EVERY) as mon:
        for xb, yb in mon.loader(DataLoader(TensorDataset(x, y), batch_size=32)):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def masks_and_bad_eval_batches(run_dir: Path, seed: int) -> None:
    """Near miss: -inf additive and padding masks in every batch, NaN only in evaluation."""
    _dict_batch_loop(run_dir, seed, bad_at=None, eval_bad=True)


# ---- update-ratio ------------------------------------------------------------------------

def _train(run_dir: Path, seed: int, model: nn.Module, opt: torch.optim.Optimizer, sched=None,
           scaler=None, steps: int = STEPS) -> None:
    torch.manual_seed(seed)
    x, y = _blobs(seed, n=steps * 32)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched, scaler=scaler,
                 param_every=PARAM_EVERY) as mon:
        for i in mon.loader(range(steps)):
            xb, yb = x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                loss = F.cross_entropy(model(xb), yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()


def group_lr_1e9(run_dir: Path, seed: int) -> None:
    """AdamW with a param group typed 1e-9 instead of 1e-4 for the first layer."""
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-9},
                             {"params": [p for m in (model[2], model[4]) for p in m.parameters()]}], lr=1e-3)
    _train(run_dir, seed, model, opt)


def sgd_lr_1e9(run_dir: Path, seed: int) -> None:
    """Plain SGD at LR 1e-9 for the whole model (nothing learns)."""
    torch.manual_seed(seed)
    model = _mlp()
    _train(run_dir, seed, model, torch.optim.SGD(model.parameters(), lr=1e-9))


def head_lr_far_too_high(run_dir: Path, seed: int) -> None:
    """AdamW (weight decay 0.5) with the head's group at LR 1: it thrashes every step."""
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.AdamW([{"params": [p for m in (model[0], model[2]) for p in m.parameters()]},
                             {"params": model[4].parameters(), "lr": 1.0}], lr=3e-3, weight_decay=0.5)
    _train(run_dir, seed, model, opt)


def warmup_cosine_frozen_unused(run_dir: Path, seed: int) -> None:
    """Near miss: warm-up from LR 0, cosine to exactly 0, a frozen first layer and a layer
    that gets no gradient (weight decay only)."""
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(10, 10).requires_grad_(False)
            self.body, self.unused, self.head = nn.Linear(10, 32), nn.Linear(32, 32), nn.Linear(32, 3)

        def forward(self, x):
            return self.head(F.relu(self.body(self.frozen(x))))

    model = Net()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.1)
    steps = 60

    def schedule(step: int) -> float:
        return step / 5 if step < 5 else 0.5 * (1 + math.cos(math.pi * (step - 5) / (steps - 6)))

    _train(run_dir, seed, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule), steps=steps)


def discriminative_lr_finetune(run_dir: Path, seed: int) -> None:
    """Near miss: fine-tuning, backbone at 1e-6 (Adam) under a head at 1e-2."""
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.Adam([{"params": [p for m in (model[0], model[2]) for p in m.parameters()], "lr": 1e-6},
                            {"params": model[4].parameters()}], lr=1e-2)
    _train(run_dir, seed, model, opt)


def fp16_scaler_skips_plateau(run_dir: Path, seed: int) -> None:
    """Near miss: fp16 with a GradScaler starting at 2**24 (its first steps are skipped)
    and ReduceLROnPlateau-style cuts by hand (LR /10 twice)."""
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[15, 30], gamma=0.1)
    _train(run_dir, seed, model, opt, sched, scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 24))


@dataclass(frozen=True)
class Fault:
    fn: Callable[[Path, int], None]
    rule: str | None
    """The rule it must trigger (at `severity` or above); None for a near miss."""
    at: int | None = None
    """The first step where the fault shows."""
    severity: str = "warning"


def _ref(**overrides) -> Callable[[Path, int], None]:
    return lambda run_dir, seed: _reference(run_dir, seed, **overrides)


FAULTS: dict[str, Fault] = {
    # nonfinite-inputs
    "nan_features_dict_batch": Fault(nan_features_dict_batch, "nonfinite-inputs", 12, "error"),
    "inf_sample_dataloader": Fault(inf_sample_dataloader, "nonfinite-inputs", 5, "error"),
    "ref_nonfinite_inputs": Fault(_ref(inject=["nonfinite-inputs"], nan_step=4), "nonfinite-inputs", 4, "error"),
    "masks_and_bad_eval_batches": Fault(masks_and_bad_eval_batches, None),
    # update-ratio
    "group_lr_1e9": Fault(group_lr_1e9, "update-ratio"),
    "sgd_lr_1e9": Fault(sgd_lr_1e9, "update-ratio"),
    "head_lr_far_too_high": Fault(head_lr_far_too_high, "update-ratio"),
    "ref_update_ratio": Fault(_ref(inject=["update-ratio"]), "update-ratio"),
    "warmup_cosine_frozen_unused": Fault(warmup_cosine_frozen_unused, None),
    "discriminative_lr_finetune": Fault(discriminative_lr_finetune, None),
    "fp16_scaler_skips_plateau": Fault(fp16_scaler_skips_plateau, None),
}
"""Every faulty loop and near miss by name."""


def record_fault(name: str, run_dir: Path, seed: int = 0) -> Path:
    """Record fault (or near miss) `name` into `run_dir` on one torch thread; returns it."""
    with one_torch_thread():
        FAULTS[name].fn(Path(run_dir), seed)
    return Path(run_dir)

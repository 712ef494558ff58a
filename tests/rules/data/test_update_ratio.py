"""update-ratio: per-layer ‖Δw‖/‖w‖ on sampled steps, far too large or practically zero;
warm-up from 0, a cosine tail, frozen and gradient-free layers, skipped steps stay silent."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.recorder import updates
from diagnose.rules.data import update_ratio
from diagnose.rundir.reader import read_run


def _data(n: int = 40):
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 10, generator=gen) * 2
    for _ in range(n):
        y = torch.randint(0, 3, (32,), generator=gen)
        yield centers[y] + torch.randn(32, 10, generator=gen), y


def _train(run_dir: Path, groups, *, steps: int = 40, sched=None, model=None, **opt_kwargs):
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.AdamW(groups(model), **opt_kwargs)
    scheduler = sched(opt) if sched else None
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=scheduler, param_every=2) as mon:
        for x, y in mon.loader(_data(steps)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if scheduler:
                scheduler.step()
    return read_run(run_dir).first


def test_fires_on_a_layer_at_lr_1e9(tmp_path: Path) -> None:
    run = _train(tmp_path / "run", lambda m: [{"params": m[0].parameters(), "lr": 1e-9},
                                             {"params": m[2].parameters()}], lr=1e-3)
    [finding] = update_ratio.check(run)
    assert finding.evidence["direction"] == "small" and list(finding.evidence["median_ratio"]) == ["0"]
    assert finding.evidence["median_ratio"]["0"] < 1e-7 and "practically never change" in finding.title


def test_fires_on_a_layer_whose_lr_is_far_too_high(tmp_path: Path) -> None:
    run = _train(tmp_path / "run", lambda m: [{"params": m[0].parameters()},
                                             {"params": m[2].parameters(), "lr": 30.0}],
                 lr=3e-3, weight_decay=0.5)
    [finding] = update_ratio.check(run)
    assert finding.evidence["direction"] == "large" and list(finding.evidence["median_ratio"]) == ["2"]
    assert finding.evidence["median_ratio"]["2"] > update_ratio.LARGE


def test_silent_on_warmup_from_zero_cosine_tail_frozen_and_gradient_free_layers(tmp_path: Path) -> None:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = nn.Linear(10, 10).requires_grad_(False)
            self.body = nn.Linear(10, 32)
            self.unused = nn.Linear(32, 32)  # no gradient: moved by weight decay alone
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            return self.head(F.relu(self.body(self.frozen(x))))

    steps = 60

    def schedule(step: int) -> float:  # warm-up from exactly 0, cosine down to exactly 0
        return step / 5 if step < 5 else 0.5 * (1 + math.cos(math.pi * (step - 5) / (steps - 6)))

    run = _train(tmp_path / "run", lambda m: [p for p in m.parameters() if p.requires_grad],
                 steps=steps, model=Net(), lr=2e-3, weight_decay=0.1,
                 sched=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule))
    ratios, eligible, _ = update_ratio.layer_ratios(run)
    assert "frozen" not in ratios.columns  # not trainable: not copied, not judged
    assert not eligible["unused"].any()  # weight decay alone, no gradient: never judged "zero"
    assert ratios.loc[0].isna().all() and not eligible.loc[0].any()  # LR 0 at step 0: nothing moved
    assert ratios["head"].iloc[-1] < ratios["head"].max() / 100  # the cosine tail is tiny...
    assert not eligible["head"].iloc[-1]
    assert update_ratio.check(run) == []  # ...and not judged


def test_reference_loop_injection_thrashes_the_probe_layer(tmp_path: Path) -> None:
    from reference_loop.train import train
    from tests.reference_loop.conftest import make_tiny

    train(make_tiny(monitor=True, epochs=3, param_every=2, inject=["update-ratio"]), tmp_path / "run",
          progress=False)
    run = read_run(tmp_path / "run").first
    findings = update_ratio.check(run)
    assert [f.evidence["direction"] for f in findings] == ["large"]
    probe = {name.rpartition(".")[0] for name in run.params.loc[run.params["group"] == 2, "name"]}
    assert set(findings[0].evidence["median_ratio"]) == probe  # the probe layer's own group


def test_copy_refused_past_the_memory_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(updates, "COPY_BUDGET_FRACTION", 1e-12)
    run = _train(tmp_path / "run", lambda m: m.parameters(), steps=6, lr=1e-3)
    assert run.update_norms.empty and update_ratio.check(run) == []
    [note] = [d for d in run.events_of("not_recorded")["data"] if d["what"] == "update-norms"]
    assert "exceed" in note["message"]


def test_silent_on_healthy(healthy_run) -> None:
    assert update_ratio.check(healthy_run.first) == []


def test_zero_code_script_with_a_group_at_lr_1e9(tmp_path: Path) -> None:
    from diagnose.zerocode import run_script
    from tests.scripts import script_path

    assert run_script(script_path("update_ratio_tiny_lr_group.py"), [], tmp_path / "run") == 0
    [finding] = update_ratio.check(read_run(tmp_path / "run").first)
    assert finding.evidence["direction"] == "small" and list(finding.evidence["median_ratio"]) == ["0"]


def test_a_failing_copy_switches_update_norms_off_not_the_recorder(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, params, copy, index):
        raise RuntimeError("unusual parameter type")

    monkeypatch.setattr(updates.UpdateSampler, "_after", broken)
    run = _train(tmp_path / "run", lambda m: m.parameters(), steps=12, lr=1e-3)
    assert run.update_norms.empty and len(run.steps) == 12 and not run.grad_norms.empty
    assert run.events_of("recorder_error").empty
    [note] = [d for d in run.events_of("not_recorded")["data"] if d["what"] == "update-norms"]
    assert "unusual parameter type" in note["message"]


def test_silent_on_a_layer_whose_optimizer_did_not_step(tmp_path: Path) -> None:
    """WGAN-GP, 5 critic steps per generator step: the weights are sampled every 25 steps,
    so every sample of the generator falls on a critic step, where its optimizer did not
    step and its weights did not move. Those are not samples of its updates."""
    from tests.harness.faults_accumulation import fault_tables

    tables = fault_tables("wgan_gp_critic_iterations", tmp_path)
    assert (tables.update_norms == 0).any().any()  # sampled, unmoved: what read as "never changes"
    assert update_ratio.check(tables) == []

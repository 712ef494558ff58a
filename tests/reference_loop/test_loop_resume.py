"""Resuming from a checkpoint continues the run exactly: bit for bit on CPU."""

import pytest
import torch

from reference_loop import checkpoint
from reference_loop.train import train

CASES = {
    "images-fp32-ema-dropout": dict(ema_decay=0.9, dropout=0.3),
    "images-fp16-scaler-accum": dict(amp="fp16", accum_steps=2, scheduler="warmup-cosine", batch_size=16),
    "images-bf16-plateau-sgd": dict(amp="bf16", scheduler="plateau", optimizer="sgd", lr=0.05),
    "chars-step-early-stop": dict(task="chars", scheduler="step", step_size=1, early_stop_patience=5),
    "images-loader-workers-accum": dict(num_workers=2, accum_steps=3),
}


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny, case):
    cfg = tiny(epochs=3, checkpoint_every=1, keep_last=3, **CASES[case])
    full = train(cfg, tmp_path / "full", progress=False)
    first_epoch = full.checkpoints[0]
    assert first_epoch.name == "epoch000.pt"

    resumed = train(cfg.replace(resume=str(first_epoch)), tmp_path / "resumed", progress=False)

    assert resumed.steps == full.steps
    for key in ("loss", "lr", "train_loss", "val_loss", "val_acc"):
        assert resumed.history[key] == full.history[key], key  # exact float equality
    a = checkpoint.load(full.checkpoints[-1])
    b = checkpoint.load(resumed.checkpoints[-1])
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    if a["ema"] is not None:
        for name, tensor in a["ema"]["shadow"].items():
            assert torch.equal(tensor, b["ema"]["shadow"][name]), name
    assert a["scaler"] == b["scaler"]


def test_resume_from_the_last_checkpoint_trains_nothing_more(tmp_path, tiny):
    cfg = tiny(epochs=2, checkpoint_every=1)
    full = train(cfg, tmp_path / "full", progress=False)
    again = train(cfg.replace(resume=str(full.checkpoints[-1])), tmp_path / "again", progress=False)
    assert again.steps == full.steps and again.history["loss"] == full.history["loss"]
